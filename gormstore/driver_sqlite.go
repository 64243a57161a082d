package gormstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// sqliteDriver is the store's driver on SQLite: one writer at a time, so
// claims of one store are serialised (run one forwarder per database
// file), and times come from the local clock, in UTC.
type sqliteDriver struct {
	s *Store
	// claims holds a token while a claim is open.
	claims chan struct{}
}

// sqliteSQL are the statements of sql/sqlite.sql and sql/shared.sql.
var sqliteSQL = parseSQL(sqlschema.SQLite)

func newSQLiteDriver(s *Store) (*sqliteDriver, error) {
	if s.table.Schema != "" {
		return nil, fmt.Errorf("%w: table %q: SQLite tables cannot be schema-qualified", ErrInvalidConfig, s.table)
	}
	st, err := renderStatements(sqliteSQL, s, []stmt{
		{name: "window"},
		{"window_topics", "window", func(v *sqlVars) { v.Topics = true }},
		{name: "has_due"},
		{"has_due_topics", "has_due", func(v *sqlVars) { v.Topics = true }},
	})
	if err != nil {
		return nil, err
	}
	s.sql = st
	return &sqliteDriver{s: s, claims: make(chan struct{}, 1)}, nil
}

func (d *sqliteDriver) dialect() sqlschema.Dialect                          { return sqlschema.SQLite }
func (d *sqliteDriver) migrationLock() func(*gorm.DB) (func() error, error) { return nil }
func (d *sqliteDriver) nowArgs() []any                                      { return []any{time.Now().UTC()} }
func (d *sqliteDriver) notifyCommitted()                                    {}
func (d *sqliteDriver) retryable(error) bool                                { return false }
func (d *sqliteDriver) listen(context.Context, func()) error                { return outbox.ErrListenUnsupported }

func (d *sqliteDriver) cutoffArg(olderThan time.Duration) any {
	return time.Now().UTC().Add(-olderThan)
}

// missingTable reports SQLite's "no such table".
func (d *sqliteDriver) missingTable(err error) bool {
	return strings.Contains(err.Error(), "no such table")
}

// insert builds one multi-row INSERT. SQLite has no column default for
// the times, so they are set here, in UTC.
func (d *sqliteDriver) insert(_ context.Context, _ gorm.ConnPool, records []outbox.Record) (string, []any, int, error) {
	var b strings.Builder
	b.WriteString(d.s.sql["insert"])
	args := make([]any, 0, len(records)*7)
	now := time.Now().UTC()
	for i, r := range records {
		if r.Message == nil {
			return "", nil, 0, fmt.Errorf("gormstore: record %d has no message", i)
		}
		payload := []byte(r.Message.Payload)
		if payload == nil {
			payload = []byte{}
		}
		md := appendMetadata(nil, r.Message.Metadata) // never JSON null: "{}" when empty
		args = append(args, r.Message.UUID, r.Topic, r.PartitionKey, payload, string(md), now, now)
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?,?,?,?,?,?)")
	}
	return b.String(), args, len(records), nil
}

// hasDue runs has_due: SQLite claims are serialised, so every due row is
// one a claim would find.
func (d *sqliteDriver) hasDue(ctx context.Context, topics []string) (bool, error) {
	q := d.s.sql["has_due"]
	args := []any{sql.Named("now", time.Now().UTC())}
	if len(topics) > 0 {
		q = d.s.sql["has_due_topics"]
		args = append(args, sql.Named("topics", topics))
	}
	var found bool
	err := d.s.db.WithContext(ctx).Raw(q, args...).Scan(&found).Error
	return found, err
}

// sqliteClaim is a claim on SQLite. SQLite has one writer at a time, so the
// claim does not hold a transaction while the forwarder publishes (that
// would block the application's commits); instead the store lets one claim
// exist at a time, and Finish writes the outcome in one short transaction.
type sqliteClaim struct {
	d    *sqliteDriver
	rows []outbox.Row
	once sync.Once
}

func (d *sqliteDriver) claim(ctx context.Context, p outbox.ClaimParams) (outbox.Claim, error) {
	select {
	case d.claims <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	c := &sqliteClaim{d: d}
	args := []any{sql.Named("now", time.Now().UTC()), sql.Named("limit", p.Limit)}
	q := d.s.sql["window"]
	if len(p.Topics) > 0 {
		q = d.s.sql["window_topics"]
		args = append(args, sql.Named("topics", p.Topics))
	}
	rows, err := d.s.db.WithContext(ctx).Raw(q, args...).Rows()
	if err != nil {
		c.release()
		return nil, fmt.Errorf("gormstore: claim from %s: %w", d.s.table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var r outbox.Row
		var metadata string
		if err := rows.Scan(&r.ID, &r.UUID, &r.Topic, &r.PartitionKey, &r.Payload, &metadata, &r.Attempts); err != nil {
			c.release()
			return nil, fmt.Errorf("gormstore: claim from %s: %w", d.s.table, err)
		}
		r.Metadata = []byte(metadata)
		c.rows = append(c.rows, r)
	}
	if err := rows.Err(); err != nil {
		c.release()
		return nil, fmt.Errorf("gormstore: claim from %s: %w", d.s.table, err)
	}
	return c, nil
}

func (c *sqliteClaim) release() { c.once.Do(func() { <-c.d.claims }) }

func (c *sqliteClaim) Rows() []outbox.Row { return c.rows }

func (c *sqliteClaim) Finish(ctx context.Context, delivered []int64, failures []outbox.Failure) error {
	done := false
	c.once.Do(func() { done = true })
	if !done {
		return errors.New("gormstore: claim already finished or released")
	}
	defer func() { <-c.d.claims }()
	now := time.Now().UTC()
	err := c.d.s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		for start := 0; start < len(delivered); start += 500 {
			ids := delivered[start:min(start+500, len(delivered))]
			var err error
			if c.d.s.cfg.KeepDelivered {
				err = tx.Exec(c.d.s.sql["delivered"], now, ids).Error
			} else {
				err = tx.Exec(c.d.s.sql["delivered"], ids).Error
			}
			if err != nil {
				return err
			}
		}
		for _, f := range failures {
			err := tx.Exec(c.d.s.sql["fail"],
				sql.Named("err", cleanError(f.Error)),
				sql.Named("park", f.Park),
				sql.Named("retry_at", now.Add(f.RetryAfter)),
				sql.Named("now", now),
				sql.Named("id", f.ID),
			).Error
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("gormstore: finish claim on %s: %w", c.d.s.table, err)
	}
	return nil
}

func (c *sqliteClaim) Release(context.Context) error {
	c.release()
	return nil
}

// purge deletes one batch with the purge statement.
func (d *sqliteDriver) purge(ctx context.Context, olderThan time.Duration, limit int) (int64, error) {
	res := d.s.db.WithContext(ctx).Exec(d.s.sql["purge"], d.cutoffArg(olderThan), limit)
	return res.RowsAffected, res.Error
}

func (d *sqliteDriver) runTx(ctx context.Context, db *gorm.DB, opts *sql.TxOptions, fn outbox.TxFunc) error {
	return d.s.runTxSave(ctx, db, opts, fn)
}
