package walrelay

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Errors that stop [Setup] and [Relay.Run]: the server or the slot is not
// fit for the WAL mode, and waiting will not change that.
var (
	// ErrWALLevel is a server that does not run with wal_level=logical.
	ErrWALLevel = errors.New("the WAL mode needs wal_level=logical")
	// ErrServerVersion is a server older than PostgreSQL 14, whose
	// pgoutput cannot stream logical decoding messages.
	ErrServerVersion = errors.New("walrelay: the WAL mode needs PostgreSQL 14 or later (pgoutput streams logical decoding messages since 14)")
	// ErrNoSlot is a replication slot that does not exist.
	ErrNoSlot = errors.New("walrelay: replication slot does not exist")
	// ErrNoPublication is a publication that does not exist.
	ErrNoPublication = errors.New("walrelay: publication does not exist")
	// ErrBadSlot is a replication slot the relay cannot read: of another
	// plugin or database, or invalidated.
	ErrBadSlot = errors.New("walrelay: replication slot cannot be used")
)

// checkServer fails unless the server at conn (a normal or a replication
// connection) runs PostgreSQL 14 or later with wal_level=logical.
func checkServer(ctx context.Context, conn *pgconn.PgConn) error {
	res, err := conn.Exec(ctx, "SELECT current_setting('server_version_num')::int, current_setting('wal_level')").ReadAll()
	if err != nil {
		return fmt.Errorf("walrelay: read server_version_num and wal_level: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 2 {
		return errors.New("walrelay: read server_version_num and wal_level: expected one row of two values")
	}
	version, level := string(res[0].Rows[0][0]), string(res[0].Rows[0][1])
	if n, err := strconv.Atoi(version); err != nil || n < 140000 {
		return fmt.Errorf("%w: server_version_num is %s", ErrServerVersion, version)
	}
	if level != "logical" {
		return walLevelError(level)
	}
	return nil
}

// walLevelError is the error of a server running with wal_level level.
func walLevelError(level string) error {
	return fmt.Errorf("walrelay: wal_level is %s; %w: ALTER SYSTEM SET wal_level = logical and restart PostgreSQL", level, ErrWALLevel)
}

// Setup prepares the database at connString for the WAL mode: it checks
// that the server runs with wal_level=logical and creates cfg's
// publication (with no tables) and logical replication slot (pgoutput)
// when they are missing. A slot streams only what is written after it
// was created, so Setup must run before the first event is written, not
// when the relay first starts. Creating a slot waits until the
// transactions running at that moment have ended. Setup is safe to run
// again and from several processes at once.
func Setup(ctx context.Context, connString string, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	pc, err := pgx.ParseConfig(connString)
	if err != nil {
		return fmt.Errorf("walrelay: setup: %w", err)
	}
	delete(pc.RuntimeParams, "replication")
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		return fmt.Errorf("walrelay: setup: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	if err := checkServer(ctx, conn.PgConn()); err != nil {
		return err
	}
	var pubExists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", cfg.Publication).Scan(&pubExists); err != nil {
		return fmt.Errorf("walrelay: setup: look up publication %s: %w", cfg.Publication, err)
	}
	if !pubExists {
		// cfg.Publication is a plain identifier (Validate).
		if _, err := conn.Exec(ctx, "CREATE PUBLICATION "+cfg.Publication); err != nil && !isDuplicate(err) {
			return fmt.Errorf("walrelay: setup: create publication %s: %w", cfg.Publication, err)
		}
	}
	if _, err := checkSlot(ctx, conn.PgConn(), cfg.Slot); err == nil {
		return nil
	} else if !errors.Is(err, ErrNoSlot) {
		return err
	}
	_, err = conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", cfg.Slot)
	if err != nil && !isDuplicate(err) {
		return fmt.Errorf("walrelay: setup: create replication slot %s: %w", cfg.Slot, err)
	}
	if isDuplicate(err) {
		// Created meanwhile by another process: check it is fit.
		_, err := checkSlot(ctx, conn.PgConn(), cfg.Slot)
		return err
	}
	return nil
}

// isDuplicate reports SQLSTATE 42710, duplicate object.
func isDuplicate(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42710"
}

// slotInfo describes a replication slot.
type slotInfo struct {
	// confirmed is the slot's confirmed_flush_lsn.
	confirmed string
	// walStatus is its wal_status; lag, retained and safe are as in
	// SlotStats.
	walStatus           string
	lag, retained, safe int64
}

// checkSlot looks slot up over conn, a normal or a replication connection
// (simple queries only), and fails unless it is a pgoutput slot of the
// connection's database that is not invalidated. slot is a plain
// identifier (Config.Validate).
func checkSlot(ctx context.Context, conn *pgconn.PgConn, slot string) (slotInfo, error) {
	res, err := conn.Exec(ctx, "SELECT plugin, database = current_database(), coalesce(wal_status, ''), coalesce(confirmed_flush_lsn::text, ''),"+
		" coalesce(("+walEnd+" - confirmed_flush_lsn)::bigint, 0), coalesce(("+walEnd+" - restart_lsn)::bigint, 0), coalesce(safe_wal_size, -1)"+
		" FROM pg_replication_slots WHERE slot_name = '"+slot+"'").ReadAll()
	if err != nil {
		return slotInfo{}, fmt.Errorf("walrelay: look up replication slot %s: %w", slot, err)
	}
	if len(res) != 1 || len(res[0].Rows) == 0 {
		return slotInfo{}, fmt.Errorf("%w: %s (create it with walrelay.Setup before the first event is written: a slot streams only what is written after it exists)", ErrNoSlot, slot)
	}
	row := res[0].Rows[0]
	plugin, sameDB, walStatus := string(row[0]), string(row[1]), string(row[2])
	switch {
	case plugin != "pgoutput":
		return slotInfo{}, fmt.Errorf("%w: %s uses plugin %q, not pgoutput", ErrBadSlot, slot, plugin)
	case sameDB != "t":
		return slotInfo{}, fmt.Errorf("%w: %s belongs to another database (a logical slot streams the database it was created in)", ErrBadSlot, slot)
	case walStatus == "lost":
		return slotInfo{}, slotLostError(slot, "wal_status lost")
	}
	info := slotInfo{confirmed: string(row[3]), walStatus: walStatus}
	for i, p := range []*int64{&info.lag, &info.retained, &info.safe} {
		*p, _ = strconv.ParseInt(string(row[4+i]), 10, 64)
	}
	return info, nil
}

// checkPublication fails unless publication exists in the database of
// conn (simple queries only). publication is a plain identifier
// (Config.Validate).
func checkPublication(ctx context.Context, conn *pgconn.PgConn, publication string) error {
	n, err := simpleValue(ctx, conn, "SELECT count(*) FROM pg_publication WHERE pubname = '"+publication+"'")
	if err != nil {
		return fmt.Errorf("walrelay: look up publication %s: %w", publication, err)
	}
	if n == "0" {
		return fmt.Errorf("%w: %s (create it with walrelay.Setup)", ErrNoPublication, publication)
	}
	return nil
}
