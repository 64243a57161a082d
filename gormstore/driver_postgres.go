package gormstore

import (
	"cmp"
	"context"
	"database/sql"
	sqldriver "database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/txoutbox/txoutbox/internal/intern"
	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// errBadConn makes database/sql discard a connection.
var errBadConn = sqldriver.ErrBadConn

// errNotPgx is returned when the *gorm.DB does not run on pgx.
var errNotPgx = errors.New("gormstore: the PostgreSQL relay needs the pgx driver (gorm.io/driver/postgres with its default pgx/v5 stdlib connection)")

// postgresDriver is the store's driver on PostgreSQL: several forwarders
// claim from one table at once (key advisory locks and SKIP LOCKED), and
// commits wake forwarders in other processes by NOTIFY.
type postgresDriver struct {
	s *Store
	// picks caches the pick statement per limit (pickSQL).
	picks sync.Map
	// contendedUntil is when claims stop skipping keys held elsewhere
	// (unix nanoseconds; see heldElsewhere).
	contendedUntil atomic.Int64
	notify         notifier
	// channel caches channelName for an unqualified table.
	chanOnce sync.Mutex
	channel  string
}

func newPostgresDriver(s *Store) (*postgresDriver, error) {
	d := &postgresDriver{s: s}
	d.notify.send = d.sendNotify
	var own []stmt
	for _, topics := range []bool{false, true} {
		for _, free := range []bool{false, true} {
			own = append(own,
				stmt{pickName(topics, free), "pick", func(v *sqlVars) {
					v.Topics, v.TopicsArg, v.Free, v.Exclude, v.Window = topics, "$3", free, true, "{window}"
				}},
				stmt{strings.Replace(pickName(topics, free), "pick", "has_due", 1), "has_due", func(v *sqlVars) {
					v.Topics, v.TopicsArg, v.Free, v.Window = topics, "$2", free, strconv.Itoa(hasDueWindow)
				}})
		}
	}
	own = append(own, stmt{name: "take"}, stmt{name: "insert_one"}, stmt{name: "emit"}, stmt{name: "wal_ready"}, stmt{name: "insert_relayed"},
		stmt{"undelivered_keys", "", func(v *sqlVars) { v.Where = "partition_key = ANY($1)" }},
		stmt{"undelivered_keys_all", "undelivered_keys", func(v *sqlVars) { v.Where = "partition_key <> ''" }})
	st, err := renderStatements(postgresSQL, s, own)
	if err != nil {
		return nil, err
	}
	s.sql = st
	return d, nil
}

// postgresSQL are the statements of sql/postgres.sql and sql/shared.sql.
var postgresSQL = parseSQL(sqlschema.Postgres)

func (d *postgresDriver) dialect() sqlschema.Dialect { return sqlschema.Postgres }
func (d *postgresDriver) migrationLock() func(*gorm.DB) (func() error, error) {
	return sqlschema.PostgresLock(migrateLockKey)
}
func (d *postgresDriver) nowArgs() []any { return nil }

func (d *postgresDriver) cutoffArg(olderThan time.Duration) any { return olderThan.Microseconds() }

// insert saves records with one statement of one array per column.
func (d *postgresDriver) insert(_ context.Context, _ gorm.ConnPool, records []outbox.Record) (string, []any, int, error) {
	n := len(records)
	uuids, topics, keys, mds := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	payloads := make([][]byte, n)
	var buf []byte
	for i, r := range records {
		if r.Message == nil {
			return "", nil, 0, fmt.Errorf("gormstore: record %d has no message", i)
		}
		uuids[i], topics[i], keys[i] = r.Message.UUID, r.Topic, r.PartitionKey
		payloads[i] = []byte(r.Message.Payload)
		if payloads[i] == nil {
			payloads[i] = []byte{}
		}
		buf = appendMetadata(buf[:0], r.Message.Metadata)
		mds[i] = string(buf)
	}
	return d.s.sql["insert"], []any{uuids, topics, keys, payloads, mds}, n, nil
}

func (d *postgresDriver) retryable(err error) bool { return retryablePostgres(err) }

// retryablePostgres reports a serialization failure (SQLSTATE 40001), a
// deadlock (40P01), or a pipelined commit whose prepared statement the
// server had lost (errStatementLost).
func retryablePostgres(err error) bool {
	if errors.Is(err, errStatementLost) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "40001" || pgErr.Code == "40P01"
	}
	return false
}

// missingTable reports SQLSTATE 42P01, undefined table.
func (d *postgresDriver) missingTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42P01"
}

// hasDue runs has_due: one statement, no transaction. Like claims, a
// store whose claims met keys held elsewhere lately leaves those keys out
// of the window.
func (d *postgresDriver) hasDue(ctx context.Context, topics []string) (bool, error) {
	lockspace, err := d.lockspace(ctx)
	if err != nil {
		return false, err
	}
	sqlDB, err := d.s.db.DB()
	if err != nil {
		return false, err
	}
	name := strings.Replace(pickName(len(topics) > 0, d.contended()), "pick", "has_due", 1)
	args := []any{lockspace}
	if len(topics) > 0 {
		args = append(args, topics)
	}
	var found bool
	err = sqlDB.QueryRowContext(ctx, d.s.sql[name], args...).Scan(&found)
	return found, err
}

// pgClaim is a claim held in an open PostgreSQL transaction on a dedicated
// connection. The transaction holds the row locks and key advisory locks
// until Finish or Release.
type pgClaim struct {
	d    *postgresDriver
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

// claim claims rows with two statements in a READ COMMITTED transaction
// (sql/postgres.sql; the final texts are in testdata/sql/postgres).
//
// pick chooses the claim's rows from the window w of the oldest due
// rows: it walks the window's keys (each unordered row counts as a key
// of its own) in the order of their oldest row while their rows fit
// in the limit, takes an advisory lock on each key it can, locks the
// unordered rows it can with FOR UPDATE SKIP LOCKED, and keeps the
// ids of the picked rows, oldest first, in a transaction-local
// setting. A key's picked rows are a prefix of its due rows. It holds
// no key it picks no row of, so a concurrent claim takes the others;
// keys already held by the caller are skipped ($2). A key another
// forwarder holds fails its lock, but its rows still fill the window
// and count against the limit, so the claim may find nothing while
// other keys are free; the pick's second column counts those keys.
// A store whose claims met them lately uses the free variant, which
// leaves the keys held elsewhere out of the window (held_keys). Taking
// the rows from the window, not from a scan per key, keeps the
// claim's cost flat on a long backlog full of not yet vacuumed index
// entries.
//
// take, after a SAVEPOINT, deletes the picked rows (or marks them
// delivered) and returns them: if every row is published, Finish only
// commits; otherwise it rolls back to the savepoint and records what
// happened. take runs in a snapshot taken after pick's key locks were
// granted, so after the commit of the forwarder that held a key
// before: a row it delivered is gone, and a key whose row it failed
// stops before that row (stop). No other writer touches a held key's
// rows.
//
// Limits are written into the text ({window}, {limit}, by pickSQL) and the claim
// runs with generic plans: one plan per statement and connection, not
// one per claim. Plans must stay sound on a table not analyzed yet,
// whose statistics guess that few rows are undelivered: ids are
// matched through arrays (the primary key), and take tests
// delivered_at inside a CASE so that no index on undelivered rows
// looks cheaper than the primary key.
func (d *postgresDriver) claim(ctx context.Context, p outbox.ClaimParams) (outbox.Claim, error) {
	free := d.contended()
	c, err := d.claimOnce(ctx, p, free)
	if err != nil {
		return nil, err
	}
	if c.held == 0 {
		return c, nil
	}
	d.heldElsewhere()
	if free || len(c.rows) >= p.Limit {
		return c, nil
	}
	// The first claim to meet keys held elsewhere counted their rows
	// against its window and limit: give its rows back and claim again,
	// skipping those keys.
	if err := c.Release(ctx); err != nil {
		return nil, err
	}
	if c, err = d.claimOnce(ctx, p, true); err != nil {
		return nil, err
	}
	return c, nil
}

// claimOnce claims in one round trip; with free it skips the
// keys held elsewhere (held_keys).
func (d *postgresDriver) claimOnce(ctx context.Context, p outbox.ClaimParams, free bool) (*pgClaim, error) {
	sqlDB, err := d.s.db.DB()
	if err != nil {
		return nil, err
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("gormstore: connect: %w", err)
	}
	c := &pgClaim{d: d, conn: conn}
	lockspace, err := d.lockspace(ctx)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("gormstore: claim from %s: %w", d.s.table, err)
	}
	err = withPgx(conn, func(px *pgx.Conn) error {
		b := &pgx.Batch{}
		b.Queue("BEGIN ISOLATION LEVEL READ COMMITTED")
		b.Queue(claimSettings)
		exclude := p.ExcludeKeys
		if exclude == nil {
			exclude = []string{}
		}
		pick := d.pickSQL(p.Limit, len(p.Topics) > 0, free)
		if len(p.Topics) > 0 {
			b.Queue(pick, lockspace, exclude, p.Topics)
		} else {
			b.Queue(pick, lockspace, exclude)
		}
		b.Queue("SAVEPOINT " + takeSavepoint)
		b.Queue(d.s.sql["take"])
		br := px.SendBatch(ctx, b)
		err := c.readBatch(br, p.Limit)
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		return err
	})
	if err != nil {
		c.abort()
		return nil, fmt.Errorf("gormstore: claim from %s: %w", d.s.table, err)
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
func (d *postgresDriver) heldElsewhere() {
	d.contendedUntil.Store(time.Now().Add(contendedFor).UnixNano())
}

// contended reports whether a claim met keys held elsewhere within the
// last contendedFor.
func (d *postgresDriver) contended() bool {
	return time.Now().UnixNano() < d.contendedUntil.Load()
}

// pickName is the name of the pick statement of a claim with or without
// topics, and skipping keys held elsewhere or not.
func pickName(topics, free bool) string {
	n := "pick_all"
	if topics {
		n = "pick_topics"
	}
	if free {
		n += "_free"
	}
	return n
}

// takeSavepoint is set before a claim takes its rows; Finish rolls back
// to it when not every row was delivered.
const takeSavepoint = "txoutbox_take"

// claimSettings sets a claim transaction's settings in one statement:
// generic plans (see claim), and a commit that does not wait for
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
func (d *postgresDriver) pickSQL(limit int, topics, free bool) string {
	k := pickKey{limit, topics, free}
	if v, ok := d.picks.Load(k); ok {
		return v.(string)
	}
	q := strings.NewReplacer("{window}", strconv.Itoa(limit+limit/2), "{limit}", strconv.Itoa(limit)).Replace(d.s.sql[pickName(topics, free)])
	d.picks.Store(k, q)
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
	st := c.d.s.sql
	err := withPgx(c.conn, func(px *pgx.Conn) error {
		b := &pgx.Batch{}
		if len(failures) > 0 || !c.allDelivered(delivered) {
			b.Queue("ROLLBACK TO SAVEPOINT " + takeSavepoint)
			if len(delivered) > 0 {
				b.Queue(st["delivered"], delivered)
			}
			if len(failures) > 0 {
				ids := make([]int64, len(failures))
				errs := make([]string, len(failures))
				delays := make([]int64, len(failures))
				park := make([]bool, len(failures))
				for i, f := range failures {
					ids[i], errs[i], delays[i], park[i] = f.ID, cleanError(f.Error), f.RetryAfter.Microseconds(), f.Park
				}
				b.Queue(st["fail"], ids, errs, delays, park)
			}
		}
		b.Queue("COMMIT") // without waiting for the WAL flush: see claimSettings
		return px.SendBatch(ctx, b).Close()
	})
	if err != nil {
		c.abort()
		return fmt.Errorf("gormstore: finish claim on %s: %w", c.d.s.table, err)
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
		return fmt.Errorf("gormstore: release claim on %s: %w", c.d.s.table, err)
	}
	return c.conn.Close()
}

// abort discards the claim's connection: closing it ends the transaction on
// the server, which releases every lock.
func (c *pgClaim) abort() {
	c.done = true
	_ = withPgx(c.conn, func(px *pgx.Conn) error {
		return sqldriver.ErrBadConn
	})
	_ = c.conn.Close()
}

// listen holds a LISTEN on the table's channel (NotifyCommitted) on one
// connection of the pool.
func (d *postgresDriver) listen(ctx context.Context, wake func()) error {
	sqlDB, err := d.s.db.DB()
	if err != nil {
		return err
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := d.channelName(ctx)
	if err != nil {
		return err
	}
	var listenErr error
	_ = withPgx(conn, func(px *pgx.Conn) error {
		if _, err := px.Exec(ctx, "LISTEN "+quoteIdent(ch)); err != nil {
			listenErr = err
			return sqldriver.ErrBadConn
		}
		wake() // rows committed before LISTEN took effect
		for {
			if _, err := px.WaitForNotification(ctx); err != nil {
				listenErr = err
				// Never hand a listening connection back to the pool.
				return sqldriver.ErrBadConn
			}
			wake()
		}
	})
	if listenErr == nil {
		listenErr = err
	}
	return listenErr
}

func (d *postgresDriver) notifyCommitted() {
	if !d.s.cfg.NoNotify && d.s.wal == nil {
		d.notify.kick()
	}
}

// sendNotify sends one NOTIFY in a transaction that does not wait for its
// WAL flush: losing it in a crash loses only a wake-up.
func (d *postgresDriver) sendNotify() {
	ctx, cancel := context.WithTimeout(context.Background(), notifyTimeout)
	defer cancel()
	sqlDB, err := d.s.db.DB()
	if err != nil {
		return
	}
	// The channel first: looking it up may take a connection of the pool,
	// which must not wait for the one this NOTIFY holds.
	ch, err := d.channelName(ctx)
	if err != nil {
		return
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return
	}
	defer conn.Close()
	// One simple query of four statements: one round trip, nothing
	// prepared, and no argument to encode.
	q := "BEGIN; SET LOCAL synchronous_commit = off; SELECT pg_notify('" + strings.ReplaceAll(ch, "'", "''") + "', ''); COMMIT"
	err = withPgx(conn, func(px *pgx.Conn) error {
		_, err := px.PgConn().Exec(ctx, q).ReadAll()
		return err
	})
	if err != nil {
		// The connection may be mid-transaction: never reuse it.
		_ = withPgx(conn, func(*pgx.Conn) error { return errBadConn })
	}
}

// channelName is the notification channel of the store's table: its
// schema-qualified name, so stores of tables with the same name in other
// schemas of the database do not wake each other. An unqualified table
// name is qualified with the connection's current schema, read once.
func (d *postgresDriver) channelName(ctx context.Context) (string, error) {
	if d.s.table.Schema != "" {
		return d.s.table.String(), nil
	}
	d.chanOnce.Lock()
	defer d.chanOnce.Unlock()
	if d.channel != "" {
		return d.channel, nil
	}
	var schema string
	if err := d.s.db.WithContext(ctx).Raw("SELECT current_schema()").Scan(&schema).Error; err != nil {
		return "", err
	}
	d.channel = schema + "." + d.s.table.Name
	return d.channel, nil
}

// lockspace is the first key of the advisory locks the claims take on
// partition keys: a hash of the schema-qualified table name, so tables of
// the same name in other schemas do not share key locks.
func (d *postgresDriver) lockspace(ctx context.Context) (int32, error) {
	name, err := d.channelName(ctx)
	if err != nil {
		return 0, err
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	return int32(h.Sum32()), nil
}

// purge deletes one batch with the purge statement.
func (d *postgresDriver) purge(ctx context.Context, olderThan time.Duration, limit int) (int64, error) {
	res := d.s.db.WithContext(ctx).Exec(d.s.sql["purge"], d.cutoffArg(olderThan), limit)
	return res.RowsAffected, res.Error
}
