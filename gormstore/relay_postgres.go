package gormstore

import (
	"cmp"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/txoutbox/txoutbox/internal/intern"
	"github.com/txoutbox/txoutbox/outbox"
)

// errBadConn makes database/sql discard a connection.
var errBadConn = driver.ErrBadConn

// errNotPgx is returned when the *gorm.DB does not run on pgx.
var errNotPgx = errors.New("gormstore: the PostgreSQL relay needs the pgx driver (gorm.io/driver/postgres with its default pgx/v5 stdlib connection)")

// pgClaim is a claim held in an open PostgreSQL transaction on a dedicated
// connection. The transaction holds the row locks and key advisory locks
// until Finish or Release.
type pgClaim struct {
	s    *Store
	conn *sql.Conn
	rows []outbox.Row
	held int64 // keys the pick could not lock: another forwarder held them
	mu   sync.Mutex
	done bool
}

// withPgx runs f on conn's pgx connection. An error that may have left the
// connection in an unknown state discards the connection.
func withPgx(conn *sql.Conn, f func(c *pgx.Conn) error) error {
	return conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return errNotPgx
		}
		return f(sc.Conn())
	})
}

func (s *Store) claimPostgres(ctx context.Context, p outbox.ClaimParams) (outbox.Claim, error) {
	free := s.contended()
	c, err := s.claimPostgresOnce(ctx, p, free)
	if err != nil {
		return nil, err
	}
	if c.held == 0 {
		return c, nil
	}
	s.heldElsewhere()
	if free || len(c.rows) >= p.Limit {
		return c, nil
	}
	// The first claim to meet keys held elsewhere counted their rows
	// against its window and limit: give its rows back and claim again,
	// skipping those keys.
	if err := c.Release(ctx); err != nil {
		return nil, err
	}
	if c, err = s.claimPostgresOnce(ctx, p, true); err != nil {
		return nil, err
	}
	return c, nil
}

// claimPostgresOnce claims in one round trip; with free it skips the
// keys held elsewhere (heldKeys).
func (s *Store) claimPostgresOnce(ctx context.Context, p outbox.ClaimParams, free bool) (*pgClaim, error) {
	sqlDB, err := s.db.DB()
	if err != nil {
		return nil, err
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("gormstore: connect: %w", err)
	}
	c := &pgClaim{s: s, conn: conn}
	lockspace, err := s.lockspace(ctx)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("gormstore: claim from %s: %w", s.table, err)
	}
	err = withPgx(conn, func(px *pgx.Conn) error {
		b := &pgx.Batch{}
		b.Queue("BEGIN ISOLATION LEVEL READ COMMITTED")
		b.Queue(claimSettings)
		exclude := p.ExcludeKeys
		if exclude == nil {
			exclude = []string{}
		}
		pick := s.pickSQL(p.Limit, len(p.Topics) > 0, free)
		if len(p.Topics) > 0 {
			b.Queue(pick, lockspace, exclude, p.Topics)
		} else {
			b.Queue(pick, lockspace, exclude)
		}
		b.Queue("SAVEPOINT " + takeSavepoint)
		b.Queue(s.relay.take)
		br := px.SendBatch(ctx, b)
		err := c.readBatch(br, p.Limit)
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		return err
	})
	if err != nil {
		c.abort()
		return nil, fmt.Errorf("gormstore: claim from %s: %w", s.table, err)
	}
	return c, nil
}

// contendedFor is how long, after a claim met keys that another
// forwarder held, claims and HasDue skip the keys held elsewhere (reading
// pg_locks) instead of counting their rows against their window: so
// forwarders that share a table share a backlog, while a forwarder alone
// never reads pg_locks.
const contendedFor = time.Minute

// heldElsewhere records that a claim met keys another forwarder held.
func (s *Store) heldElsewhere() {
	s.pg.contendedUntil.Store(time.Now().Add(contendedFor).UnixNano())
}

// contended reports whether a claim met keys held elsewhere within the
// last contendedFor.
func (s *Store) contended() bool {
	return time.Now().UnixNano() < s.pg.contendedUntil.Load()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// takeSavepoint is set before a claim takes its rows; Finish rolls back
// to it when not every row was delivered.
const takeSavepoint = "txoutbox_take"

// claimSettings sets a claim transaction's settings in one statement:
// generic plans (see newRelaySQL), and a commit that does not wait for
// the WAL flush. A delivery mark lost in a crash means a redelivery, never
// a loss, so finishing a batch need not wait for the disk.
const claimSettings = `SELECT set_config('plan_cache_mode', 'force_generic_plan', true),
	set_config('synchronous_commit', 'off', true)`

type pickKey struct {
	limit        int
	topics, free bool
}

// pickSQL returns the pick statement for limit rows, built once per limit:
// the limits are part of the text, so that generic plans know them.
//
// The window holds half a batch more rows than the batch: a claim's
// batch rarely spans every key of its window, which leaves keys for the
// claim made while it publishes, and for other forwarders. Every row of
// the window is read and grouped, so a wider window costs PostgreSQL CPU
// on every claim (a window of 2× the batch cost about 0.4 µs more per
// relayed event, for no more events/s).
func (s *Store) pickSQL(limit int, topics, free bool) string {
	k := pickKey{limit, topics, free}
	if v, ok := s.pg.picks.Load(k); ok {
		return v.(string)
	}
	pick := s.relay.pick[b2i(topics)][b2i(free)]
	q := strings.NewReplacer("{window}", strconv.Itoa(limit+limit/2), "{limit}", strconv.Itoa(limit)).Replace(pick)
	s.pg.picks.Store(k, q)
	return q
}

// readBatch reads the claim's rows, in ID order. The pick statement
// chose at most limit of them.
func (c *pgClaim) readBatch(br pgx.BatchResults, limit int) error {
	for range 2 { // BEGIN, claimSettings
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	var picked bool
	if err := br.QueryRow().Scan(&picked, &c.held); err != nil {
		return err
	}
	if _, err := br.Exec(); err != nil { // SAVEPOINT
		return err
	}
	rows, err := br.Query()
	if err != nil {
		return err
	}
	c.rows, err = scanRows(rows, limit)
	if err != nil {
		return err
	}
	slices.SortFunc(c.rows, func(a, b outbox.Row) int { return cmp.Compare(a.ID, b.ID) })
	return nil
}

// scanRows reads a claim's rows. Most claims come in the formats pgx's
// extended protocol gives these columns (binary integers and bytea, text
// strings and jsonb): their raw values are read directly, with a row's
// payload and metadata in one allocation and topics and partition keys
// shared among the batch's rows. Other formats (the simple protocol) go
// through pgx's Scan.
func scanRows(rows pgx.Rows, limit int) ([]outbox.Row, error) {
	defer rows.Close()
	out := make([]outbox.Row, 0, min(limit, 64)) // most claims under light load are small
	raw := rawRowFormats(rows.FieldDescriptions())
	var shared intern.Table
	if raw {
		shared = intern.Table{}
	}
	for rows.Next() {
		if len(out) == cap(out) && len(out) < limit {
			out = slices.Grow(out, limit-len(out)) // a claim that is not small is often full
		}
		var r outbox.Row
		if raw {
			if err := readRawRow(rows.RawValues(), &r, shared); err != nil {
				return nil, err
			}
		} else {
			var attempts int32
			if err := rows.Scan(&r.ID, &r.UUID, &r.Topic, &r.PartitionKey, &r.Payload, &r.Metadata, &attempts); err != nil {
				return nil, err
			}
			r.Attempts = int(attempts)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// rawRow is the type and format of each of rowColumns that readRawRow
// reads; a format of -1 stands for either (text reads the same in both).
var rawRow = [...]struct {
	oid    uint32
	format int16
}{
	{pgtype.Int8OID, pgx.BinaryFormatCode},  // id
	{pgtype.TextOID, -1},                    // uuid
	{pgtype.TextOID, -1},                    // topic
	{pgtype.TextOID, -1},                    // partition_key
	{pgtype.ByteaOID, pgx.BinaryFormatCode}, // payload
	{pgtype.JSONBOID, pgx.TextFormatCode},   // metadata
	{pgtype.Int4OID, pgx.BinaryFormatCode},  // attempts
}

// rawRowFormats reports whether readRawRow can read rows described by fds.
func rawRowFormats(fds []pgconn.FieldDescription) bool {
	if len(fds) != len(rawRow) {
		return false
	}
	for i, c := range rawRow {
		if fds[i].DataTypeOID != c.oid || (c.format >= 0 && fds[i].Format != c.format) {
			return false
		}
	}
	return true
}

// readRawRow reads one row of rowColumns in the formats of rawRow into r.
// shared holds the batch's topics and partition keys.
func readRawRow(v [][]byte, r *outbox.Row, shared intern.Table) error {
	if len(v) != len(rawRow) || len(v[0]) != 8 || len(v[6]) != 4 {
		return errors.New("gormstore: malformed outbox row")
	}
	for _, b := range v[1:6] {
		if b == nil {
			return errors.New("gormstore: NULL column in an outbox row")
		}
	}
	r.ID = int64(binary.BigEndian.Uint64(v[0]))
	r.UUID = string(v[1])
	r.Topic = shared.String(v[2])
	r.PartitionKey = shared.String(v[3])
	buf := make([]byte, len(v[4])+len(v[5]))
	n := copy(buf, v[4])
	copy(buf[n:], v[5])
	r.Payload = buf[:n:n]
	r.Metadata = buf[n:]
	r.Attempts = int(int32(binary.BigEndian.Uint32(v[6])))
	return nil
}

func (c *pgClaim) Rows() []outbox.Row { return c.rows }

// Finish commits the claim, in one round trip. The claim took its rows
// already: when every row was delivered it only commits; otherwise it
// rolls back to the savepoint before the take, marks the delivered rows,
// records the failures, and commits.
func (c *pgClaim) Finish(ctx context.Context, delivered []int64, failures []outbox.Failure) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return errors.New("gormstore: claim already finished or released")
	}
	c.done = true
	r := &c.s.relay
	err := withPgx(c.conn, func(px *pgx.Conn) error {
		b := &pgx.Batch{}
		if len(failures) > 0 || !c.allDelivered(delivered) {
			b.Queue("ROLLBACK TO SAVEPOINT " + takeSavepoint)
			if len(delivered) > 0 {
				b.Queue(r.delivered, delivered)
			}
			if len(failures) > 0 {
				ids := make([]int64, len(failures))
				errs := make([]string, len(failures))
				delays := make([]int64, len(failures))
				park := make([]bool, len(failures))
				for i, f := range failures {
					ids[i], errs[i], delays[i], park[i] = f.ID, cleanError(f.Error), f.RetryAfter.Microseconds(), f.Park
				}
				b.Queue(r.fail, ids, errs, delays, park)
			}
		}
		b.Queue("COMMIT") // without waiting for the WAL flush: see claimSettings
		return px.SendBatch(ctx, b).Close()
	})
	if err != nil {
		c.abort()
		return fmt.Errorf("gormstore: finish claim on %s: %w", c.s.table, err)
	}
	return c.conn.Close()
}

// allDelivered reports whether delivered holds every claimed row.
func (c *pgClaim) allDelivered(delivered []int64) bool {
	if len(delivered) != len(c.rows) {
		return false
	}
	ids := slices.Clone(delivered)
	slices.Sort(ids)
	for i, r := range c.rows {
		if ids[i] != r.ID {
			return false
		}
	}
	return true
}

// Release rolls the claim's transaction back: every row stays as it was.
func (c *pgClaim) Release(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return nil
	}
	c.done = true
	err := withPgx(c.conn, func(px *pgx.Conn) error {
		_, err := px.Exec(ctx, "ROLLBACK")
		return err
	})
	if err != nil {
		c.abort()
		return fmt.Errorf("gormstore: release claim on %s: %w", c.s.table, err)
	}
	return c.conn.Close()
}

// abort discards the claim's connection: closing it ends the transaction on
// the server, which releases every lock.
func (c *pgClaim) abort() {
	c.done = true
	_ = withPgx(c.conn, func(px *pgx.Conn) error {
		return driver.ErrBadConn
	})
	_ = c.conn.Close()
}

// Listen calls wake whenever a transaction that saved outbox rows commits
// (PostgreSQL NOTIFY, see NotifyCommitted), until ctx ends or the
// connection fails. It holds one connection of the pool while it runs. On
// SQLite it returns outbox.ErrListenUnsupported at once: forwarders there
// rely on in-process wake-ups and polling.
func (s *Store) Listen(ctx context.Context, wake func()) error {
	if s.dialect != postgres {
		return outbox.ErrListenUnsupported
	}
	sqlDB, err := s.db.DB()
	if err != nil {
		return err
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := s.channelName(ctx)
	if err != nil {
		return err
	}
	var listenErr error
	_ = withPgx(conn, func(px *pgx.Conn) error {
		if _, err := px.Exec(ctx, "LISTEN "+quoteIdent(ch)); err != nil {
			listenErr = err
			return driver.ErrBadConn
		}
		wake() // rows committed before LISTEN took effect
		for {
			if _, err := px.WaitForNotification(ctx); err != nil {
				listenErr = err
				// Never hand a listening connection back to the pool.
				return driver.ErrBadConn
			}
			wake()
		}
	})
	if listenErr == nil {
		listenErr = err
	}
	return listenErr
}
