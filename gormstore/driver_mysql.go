package gormstore

import (
	"context"
	"crypto/sha1"
	"database/sql"
	sqldriver "database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
)

// mysqlDriver is the store's driver on MySQL 8.0+ and MariaDB 10.6+.
//
// Several forwarders claim from one table at once. MySQL has no
// transaction-scoped advisory locks, so a claim holds user locks
// (GET_LOCK) on a connection of its own, pinned from the pool until Finish
// or Release: one per partition key whose rows it takes, and one per
// unordered row. The locks, not row locks, keep claims apart, so a claim
// holds no transaction while its rows are published: the application's
// commits never wait for a forwarder, and the claim needs neither FOR
// UPDATE SKIP LOCKED nor the binary log format that makes it safe.
// Finish writes the outcome in one short transaction, commits, and only
// then releases the locks: the next claim of a key reads its rows after
// that commit. A forwarder that dies loses its connection, and the server
// releases its locks.
//
// There is no LISTEN/NOTIFY: forwarders in the process that committed are
// woken after commit (TransactionalConfig.Wake), others poll.
type mysqlDriver struct {
	s *Store
	// maxPacket is the server's max_allowed_packet, once read.
	maxPacket atomic.Int64
	// lockPrefix is the prefix of the claims' lock names (lockName), read
	// once.
	prefixMu   sync.Mutex
	lockPrefix string
}

// mysqlSQL are the statements of sql/mysql.sql and sql/shared.sql.
var mysqlSQL = parseSQL(sqlschema.MySQL)

func newMySQLDriver(s *Store) (*mysqlDriver, error) {
	if d, ok := s.db.Dialector.(*mysql.Dialector); ok && d.DSNConfig != nil && !d.DSNConfig.ParseTime {
		return nil, fmt.Errorf("%w: the MySQL DSN needs parseTime=true (the store reads DATETIME columns as time.Time)", ErrInvalidConfig)
	}
	st, err := renderStatements(mysqlSQL, s, []stmt{
		{name: "window"},
		{"window_topics", "window", func(v *sqlVars) { v.Topics = true }},
		{name: "purge_pick"},
		{name: "take"},
		{"take_topics", "take", func(v *sqlVars) { v.Topics = true }},
		{"has_due", "", func(v *sqlVars) { v.Window = strconv.Itoa(hasDueWindow) }},
		{"has_due_topics", "has_due", func(v *sqlVars) { v.Topics, v.Window = true, strconv.Itoa(hasDueWindow) }},
	})
	if err != nil {
		return nil, err
	}
	s.sql = st
	return &mysqlDriver{s: s}, nil
}

func (d *mysqlDriver) dialect() sqlschema.Dialect { return sqlschema.MySQL }
func (d *mysqlDriver) nowArgs() []any             { return nil }
func (d *mysqlDriver) notifyCommitted()           {}

func (d *mysqlDriver) migrationLock() func(*gorm.DB) (func() error, error) {
	return sqlschema.MySQLLock("txoutbox_migrate")
}

func (d *mysqlDriver) cutoffArg(olderThan time.Duration) any { return olderThan.Microseconds() }

func (d *mysqlDriver) listen(context.Context, func()) error { return outbox.ErrListenUnsupported }

// MySQL error numbers the driver tells apart.
const (
	mysqlLockWaitTimeout = 1205
	mysqlDeadlock        = 1213
	mysqlNoSuchTable     = 1146
)

// retryable reports a deadlock (1213) or a lock wait timeout (1205):
// InnoDB rolls back the deadlock's victim, and the whole transaction may
// run again.
func (d *mysqlDriver) retryable(err error) bool {
	var myErr *gomysql.MySQLError
	return errors.As(err, &myErr) && (myErr.Number == mysqlDeadlock || myErr.Number == mysqlLockWaitTimeout)
}

func (d *mysqlDriver) missingTable(err error) bool {
	var myErr *gomysql.MySQLError
	return errors.As(err, &myErr) && myErr.Number == mysqlNoSuchTable
}

// packetLimit returns the server's max_allowed_packet, the most bytes one
// statement may carry, read on conn (the transaction's connection: a
// pooled one could wait for a pool that Save's callers hold).
func (d *mysqlDriver) packetLimit(ctx context.Context, conn gorm.ConnPool) (int, error) {
	if n := d.maxPacket.Load(); n > 0 {
		return int(n), nil
	}
	var n int64
	if err := conn.QueryRowContext(ctx, "SELECT @@max_allowed_packet").Scan(&n); err != nil {
		return 0, err
	}
	d.maxPacket.Store(n)
	return int(n), nil
}

// insertRowOverhead bounds the bytes of one row's tuple besides its
// values, and insertHeadroom those of the statement besides its rows.
const (
	insertRowOverhead = 64
	insertHeadroom    = 1024
)

// insert builds one multi-row INSERT of the records that fit in the
// server's max_allowed_packet. A record that cannot fit alone is refused,
// naming the limit, before anything is written.
func (d *mysqlDriver) insert(ctx context.Context, conn gorm.ConnPool, records []outbox.Record) (string, []any, int, error) {
	limit, err := d.packetLimit(ctx, conn)
	if err != nil {
		return "", nil, 0, fmt.Errorf("gormstore: read max_allowed_packet: %w", err)
	}
	var b strings.Builder
	b.WriteString(d.s.sql["insert"])
	args := make([]any, 0, len(records)*5)
	size := insertHeadroom
	n := 0
	for i, r := range records {
		if r.Message == nil {
			return "", nil, 0, fmt.Errorf("gormstore: record %d has no message", i)
		}
		if err := mysqlColumnsFit(i, r); err != nil {
			return "", nil, 0, err
		}
		payload := []byte(r.Message.Payload)
		if payload == nil {
			payload = []byte{}
		}
		md := appendMetadata(nil, r.Message.Metadata)
		// Interpolated, a value may take twice its bytes (escapes).
		rowSize := insertRowOverhead + 2*(len(r.Message.UUID)+len(r.Topic)+len(r.PartitionKey)+len(payload)+len(md))
		if insertHeadroom+rowSize > limit {
			return "", nil, 0, fmt.Errorf("%w: record %d (message %s): %d bytes of payload and metadata do not fit in the MySQL server's max_allowed_packet of %d bytes (raise max_allowed_packet, or lower outbox.EncoderConfig.MaxPayloadBytes)",
				outbox.ErrPayloadTooLarge, i, r.Message.UUID, len(payload)+len(md), limit)
		}
		if size+rowSize > limit {
			break
		}
		size += rowSize
		args = append(args, r.Message.UUID, r.Topic, r.PartitionKey, payload, string(md))
		if n > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?,?,?,?)")
		n++
	}
	return b.String(), args, n, nil
}

// The widths of the MySQL table's text columns, in bytes
// (migrations/mysql).
const (
	mysqlMaxUUID  = 255
	mysqlMaxTopic = 1024
	mysqlMaxKey   = 1024
)

// mysqlColumnsFit refuses a record whose UUID, topic or partition key is
// wider than its column, naming the limit, before anything is written.
func mysqlColumnsFit(i int, r outbox.Record) error {
	for _, c := range []struct {
		name  string
		value string
		max   int
	}{
		{"message UUID", r.Message.UUID, mysqlMaxUUID},
		{"topic", r.Topic, mysqlMaxTopic},
		{"partition key", r.PartitionKey, mysqlMaxKey},
	} {
		if len(c.value) > c.max {
			return fmt.Errorf("%w: record %d (message %.64s): its %s is %d bytes, the MySQL table holds at most %d", ErrValueTooLong, i, r.Message.UUID, c.name, len(c.value), c.max)
		}
	}
	return nil
}

// expand writes the lists and limits of a call into a statement: each
// pair is a placeholder ("{ids}") and its text.
func expand(q string, pairs ...string) string { return strings.NewReplacer(pairs...).Replace(q) }

// marks returns n comma-separated parameter marks, "?,?,?".
func marks(n int) string { return strings.TrimSuffix(strings.Repeat("?,", n), ",") }

// lockName returns the name of a claim's user lock on a partition key, or
// on an unordered row (key "" and its id): the table's lock prefix and
// the key's SHA-1, or "#" and the id. Names stay within MySQL's 64
// characters whatever the key; has_due computes the same names in SQL.
func lockName(prefix, key string, id int64) string {
	if key == "" {
		return prefix + "#" + strconv.FormatInt(id, 10)
	}
	sum := sha1.Sum([]byte(key))
	return prefix + hex.EncodeToString(sum[:])
}

// prefix returns the lock prefix of the store's table: "txo:" and a hash
// of its database-qualified name, so tables of the same name in other
// databases of the server do not share locks.
func (d *mysqlDriver) prefix(ctx context.Context) (string, error) {
	d.prefixMu.Lock()
	defer d.prefixMu.Unlock()
	if d.lockPrefix != "" {
		return d.lockPrefix, nil
	}
	schema := d.s.table.Schema
	if schema == "" {
		if err := d.s.db.WithContext(ctx).Raw("SELECT DATABASE()").Scan(&schema).Error; err != nil {
			return "", err
		}
	}
	h := fnv.New32a()
	h.Write([]byte(schema + "." + d.s.table.Name))
	d.lockPrefix = fmt.Sprintf("txo:%08x:", h.Sum32())
	return d.lockPrefix, nil
}

// purge deletes one batch in a transaction that first locks it, skipping
// rows another cleaner holds.
func (d *mysqlDriver) purge(ctx context.Context, olderThan time.Duration, limit int) (int64, error) {
	var n int64
	err := d.s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var ids []int64
		if err := tx.Raw(d.s.sql["purge_pick"], d.cutoffArg(olderThan), limit).Scan(&ids).Error; err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		res := tx.Exec(d.s.sql["purge"], ids)
		n = res.RowsAffected
		return res.Error
	})
	return n, err
}

// hasDue runs has_due on the oldest due rows (hasDueWindow), as a claim
// would: true when one of them is unordered or of a key no claim holds.
func (d *mysqlDriver) hasDue(ctx context.Context, topics []string) (bool, error) {
	prefix, err := d.prefix(ctx)
	if err != nil {
		return false, err
	}
	q := d.s.sql["has_due"]
	args := []any{}
	if len(topics) > 0 {
		q = d.s.sql["has_due_topics"]
		for _, t := range topics {
			args = append(args, t)
		}
	}
	q = expand(q, "{topics}", marks(len(topics)))
	var found bool
	err = d.s.db.WithContext(ctx).Raw(q, append(args, prefix)...).Scan(&found).Error
	return found, err
}

// mysqlClaim is a claim on MySQL: the user locks of its keys and unordered
// rows, held by conn.
type mysqlClaim struct {
	d    *mysqlDriver
	conn *sql.Conn
	rows []outbox.Row
	mu   sync.Mutex
	done bool
}

// claim picks the oldest due rows (window), walks their keys in the order
// of their oldest row while their rows fit in the limit (each unordered
// row counts as a key of its own, as on PostgreSQL), tries each one's
// lock without waiting, reads the due rows of the keys and unordered rows
// it got (take), and gives back the locks of those it read no row of. A
// key another claim holds fails its lock and is left out.
func (d *mysqlDriver) claim(ctx context.Context, p outbox.ClaimParams) (outbox.Claim, error) {
	prefix, err := d.prefix(ctx)
	if err != nil {
		return nil, fmt.Errorf("gormstore: claim from %s: %w", d.s.table, err)
	}
	sqlDB, err := d.s.db.DB()
	if err != nil {
		return nil, err
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("gormstore: connect: %w", err)
	}
	c := &mysqlClaim{d: d, conn: conn}
	if err := c.take(ctx, p, prefix); err != nil {
		c.abort()
		return nil, fmt.Errorf("gormstore: claim from %s: %w", d.s.table, mysqlHint(err))
	}
	return c, nil
}

// candidate is a key of a claim's window, or an unordered row of it.
type candidate struct {
	key  string
	id   int64 // the unordered row; the key's first row
	lock string
}

func (c *mysqlClaim) take(ctx context.Context, p outbox.ClaimParams, prefix string) error {
	d := c.d
	topicArgs := make([]any, 0, len(p.Topics))
	for _, t := range p.Topics {
		topicArgs = append(topicArgs, t)
	}
	window, takeSQL := d.s.sql["window"], d.s.sql["take"]
	if len(p.Topics) > 0 {
		window, takeSQL = d.s.sql["window_topics"], d.s.sql["take_topics"]
	}
	exclude := ""
	args := slices.Clone(topicArgs)
	if len(p.ExcludeKeys) > 0 {
		exclude = "\n\t  AND o.partition_key NOT IN (" + marks(len(p.ExcludeKeys)) + ")"
		for _, k := range p.ExcludeKeys {
			args = append(args, k)
		}
	}
	q := expand(window, "{topics}", marks(len(p.Topics)), "{exclude}", exclude, "{window}", strconv.Itoa(p.Limit+p.Limit/2))
	rows, err := c.conn.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	var (
		cands []candidate
		seen  = map[string]int{}     // key → index in cands
		ids   = map[string][]int64{} // key → its rows in the window
	)
	for rows.Next() {
		var id int64
		var key string
		if err := rows.Scan(&id, &key); err != nil {
			rows.Close()
			return err
		}
		if key == "" {
			cands = append(cands, candidate{id: id, lock: lockName(prefix, "", id)})
			continue
		}
		if _, ok := seen[key]; !ok {
			seen[key] = len(cands)
			cands = append(cands, candidate{key: key, id: id, lock: lockName(prefix, key, 0)})
		}
		ids[key] = append(ids[key], id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	// The keys whose rows fit in the limit, in the order of their first row.
	before := 0
	n := 0
	for n < len(cands) && before < p.Limit {
		before += max(len(ids[cands[n].key]), 1)
		n++
	}
	cands = cands[:n]
	if len(cands) == 0 {
		return nil
	}
	got, err := c.lock(ctx, cands)
	if err != nil {
		return err
	}
	var take []any
	for i, cd := range cands {
		switch {
		case !got[i]:
		case cd.key == "":
			take = append(take, cd.id)
		default:
			for _, id := range ids[cd.key] {
				take = append(take, id)
			}
		}
	}
	if len(take) == 0 {
		return nil
	}
	q = expand(takeSQL, "{ids}", marks(len(take)), "{topics}", marks(len(p.Topics)), "{limit}", strconv.Itoa(p.Limit))
	rs, err := c.conn.QueryContext(ctx, q, append(take, topicArgs...)...)
	if err != nil {
		return err
	}
	defer rs.Close()
	for rs.Next() {
		var r outbox.Row
		if err := rs.Scan(&r.ID, &r.UUID, &r.Topic, &r.PartitionKey, &r.Payload, &r.Metadata, &r.Attempts); err != nil {
			return err
		}
		c.rows = append(c.rows, r)
	}
	if err := rs.Err(); err != nil {
		return err
	}
	// Give back the locks of what the claim did not take.
	taken := map[string]bool{}
	for _, r := range c.rows {
		taken[lockName(prefix, r.PartitionKey, r.ID)] = true
	}
	var unused []string
	for i, cd := range cands {
		if got[i] && !taken[cd.lock] {
			unused = append(unused, cd.lock)
		}
	}
	return c.unlock(ctx, unused)
}

// lockChunk bounds the locks tried or released by one statement.
const lockChunk = 500

// lock tries the candidates' locks without waiting, one statement per
// lockChunk of them, and reports which it got.
func (c *mysqlClaim) lock(ctx context.Context, cands []candidate) ([]bool, error) {
	got := make([]bool, 0, len(cands))
	for start := 0; start < len(cands); start += lockChunk {
		chunk := cands[start:min(start+lockChunk, len(cands))]
		args := make([]any, len(chunk))
		cols := make([]string, len(chunk))
		for i, cd := range chunk {
			args[i] = cd.lock
			cols[i] = "GET_LOCK(?, 0)"
		}
		res := make([]sql.NullInt64, len(chunk))
		dst := make([]any, len(chunk))
		for i := range res {
			dst[i] = &res[i]
		}
		if err := c.conn.QueryRowContext(ctx, "SELECT "+strings.Join(cols, ", "), args...).Scan(dst...); err != nil {
			return nil, err
		}
		for _, r := range res {
			got = append(got, r.Valid && r.Int64 == 1)
		}
	}
	return got, nil
}

// unlock releases the given locks.
func (c *mysqlClaim) unlock(ctx context.Context, names []string) error {
	for start := 0; start < len(names); start += lockChunk {
		chunk := names[start:min(start+lockChunk, len(names))]
		args := make([]any, len(chunk))
		for i, n := range chunk {
			args[i] = n
		}
		q := "DO " + strings.TrimSuffix(strings.Repeat("RELEASE_LOCK(?), ", len(chunk)), ", ")
		if _, err := c.conn.ExecContext(ctx, q, args...); err != nil {
			return err
		}
	}
	return nil
}

func (c *mysqlClaim) Rows() []outbox.Row { return c.rows }

// Finish writes the outcome in one transaction, commits, and then
// releases the claim's locks.
func (c *mysqlClaim) Finish(ctx context.Context, delivered []int64, failures []outbox.Failure) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return errors.New("gormstore: claim already finished or released")
	}
	c.done = true
	if err := c.finish(ctx, delivered, failures); err != nil {
		c.abort()
		return fmt.Errorf("gormstore: finish claim on %s: %w", c.d.s.table, err)
	}
	return c.release(ctx)
}

func (c *mysqlClaim) finish(ctx context.Context, delivered []int64, failures []outbox.Failure) error {
	if len(delivered) == 0 && len(failures) == 0 {
		return nil
	}
	tx, err := c.conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	st := c.d.s.sql
	for start := 0; start < len(delivered); start += saveChunk {
		chunk := delivered[start:min(start+saveChunk, len(delivered))]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		if _, err := tx.ExecContext(ctx, expand(st["delivered"], "{ids}", marks(len(chunk))), args...); err != nil {
			return err
		}
	}
	for _, f := range failures {
		if _, err := tx.ExecContext(ctx, st["fail"], cleanError(f.Error), f.Park, f.RetryAfter.Microseconds(), f.Park, f.ID); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// Release gives the rows back untouched: it releases the claim's locks.
func (c *mysqlClaim) Release(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return nil
	}
	c.done = true
	return c.release(ctx)
}

// release releases every lock of the claim and hands its connection back
// to the pool.
func (c *mysqlClaim) release(ctx context.Context) error {
	if _, err := c.conn.ExecContext(ctx, "DO RELEASE_ALL_LOCKS()"); err != nil {
		c.abort()
		return fmt.Errorf("gormstore: release claim on %s: %w", c.d.s.table, err)
	}
	return c.conn.Close()
}

// abort discards the claim's connection: the server ends its session,
// which releases every lock and rolls back an open transaction.
func (c *mysqlClaim) abort() {
	c.done = true
	_ = c.conn.Raw(func(any) error { return sqldriver.ErrBadConn })
	_ = c.conn.Close()
}

// mysqlHint adds what to do to errors whose cause is the server's setup.
func mysqlHint(err error) error {
	var myErr *gomysql.MySQLError
	if errors.As(err, &myErr) && myErr.Number == mysqlNoSuchTable {
		return fmt.Errorf("%w (create the table first: gormstore.Migrate, Store.Migrate, or the CLI's \"txoutbox migrate\")", err)
	}
	return err
}

func (d *mysqlDriver) runTx(ctx context.Context, db *gorm.DB, opts *sql.TxOptions, fn outbox.TxFunc) error {
	return d.s.runTxSave(ctx, db, opts, fn)
}
