package middleware_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

func TestValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	cfg := middleware.TransactionalConfig{
		Isolation:    sql.LevelSnapshot,
		RetryBackoff: -time.Millisecond,
		AfterCommit:  []func(middleware.AfterCommitParams){func(middleware.AfterCommitParams) {}, nil},
	}
	err := cfg.Validate()
	require.ErrorIs(t, err, middleware.ErrInvalidConfig)
	joined, ok := err.(interface{ Unwrap() []error }) //nolint:errorlint // errors.Join's shape is the point
	require.True(t, ok, "Validate joins its errors with errors.Join, got %T", err)
	parts := joined.Unwrap()
	require.Len(t, parts, 5, "%v", err)
	for _, p := range parts {
		require.ErrorIs(t, p, middleware.ErrInvalidConfig)
	}
	msg := err.Error()
	for _, want := range []string{
		"missing DB",
		"missing Store (try gormstore.New",
		"Isolation Snapshot is not supported",
		"RetryBackoff -1ms is negative",
		"AfterCommit[1] is nil",
	} {
		require.Contains(t, msg, want)
	}

	tm, err2 := middleware.NewTransactional(cfg)
	require.Nil(t, tm)
	require.Equal(t, err.Error(), err2.Error(), "NewTransactional reports what Validate reports")
}

func TestValidateAcceptsSupportedConfigs(t *testing.T) {
	t.Parallel()
	db := testdb.OpenSQLite(t)
	store, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)
	for _, iso := range []sql.IsolationLevel{
		sql.LevelDefault, sql.LevelReadUncommitted, sql.LevelReadCommitted, sql.LevelRepeatableRead, sql.LevelSerializable,
	} {
		cfg := middleware.TransactionalConfig{DB: db, Store: store, Isolation: iso}
		require.NoError(t, cfg.Validate(), iso.String())
	}
	for _, iso := range []sql.IsolationLevel{sql.LevelWriteCommitted, sql.LevelSnapshot, sql.LevelLinearizable, sql.IsolationLevel(99)} {
		cfg := middleware.TransactionalConfig{DB: db, Store: store, Isolation: iso}
		require.ErrorIs(t, cfg.Validate(), middleware.ErrInvalidConfig, iso.String())
	}
	// Negative MaxRetries disables retries; it is not a mistake.
	cfg := middleware.TransactionalConfig{DB: db, Store: store, MaxRetries: -1, ReadOnly: true}
	require.NoError(t, cfg.Validate())
	tm, err := middleware.NewTransactional(cfg)
	require.NoError(t, err)
	require.NotNil(t, tm)
}

func TestIsolationLevelIsApplied(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.Postgres)
	cases := map[sql.IsolationLevel]string{
		sql.LevelDefault:        "read committed",
		sql.LevelReadCommitted:  "read committed",
		sql.LevelRepeatableRead: "repeatable read",
		sql.LevelSerializable:   "serializable",
	}
	store, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)
	for iso, want := range cases {
		for _, readOnly := range []bool{false, true} {
			tm, err := middleware.NewTransactional(middleware.TransactionalConfig{
				DB: db, Store: store, Isolation: iso, ReadOnly: readOnly,
			})
			require.NoError(t, err)
			var level, ro string
			require.NoError(t, tm.Run(context.Background(), "Probe", func(ctx context.Context) error {
				tx, err := outbox.Tx(ctx)
				require.NoError(t, err)
				require.NoError(t, tx.Raw("SHOW transaction_isolation").Scan(&level).Error)
				return tx.Raw("SHOW transaction_read_only").Scan(&ro).Error
			}))
			require.Equal(t, want, level, iso.String())
			require.Equal(t, map[bool]string{false: "off", true: "on"}[readOnly], ro)
		}
	}
}

func TestReadOnly(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, withConfig(func(c *middleware.TransactionalConfig) { c.ReadOnly = true }))
		require.NoError(t, f.db.Exec("INSERT INTO orders (id, amount) VALUES ('seed', 1)").Error)

		// Reading works.
		var n int64
		require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
			tx, err := outbox.Tx(ctx)
			require.NoError(t, err)
			return tx.Raw("SELECT count(*) FROM orders").Scan(&n).Error
		}))
		require.Equal(t, int64(1), n)

		// Emitting fails, whether the handler returns Emit's error or not,
		// and in nested commands too.
		for _, ignore := range []bool{false, true} {
			err := f.run(context.Background(), func(ctx context.Context) error {
				err := outbox.Emit(ctx, OrderPlaced{OrderID: "o-1"})
				require.ErrorIs(t, err, outbox.ErrReadOnly)
				if ignore {
					return nil
				}
				return err
			})
			require.ErrorIs(t, err, outbox.ErrReadOnly)
		}
		err := f.run(context.Background(), func(ctx context.Context) error {
			return f.run(ctx, func(ctx context.Context) error {
				return outbox.Emit(ctx, OrderPlaced{OrderID: "o-1"})
			})
		})
		require.ErrorIs(t, err, outbox.ErrReadOnly)
		require.Zero(t, f.outboxCount(t))

		// Business writes: PostgreSQL enforces the read-only transaction;
		// the SQLite driver (glebarez/sqlite) accepts ReadOnly but does not
		// enforce it (it begins a deferred transaction), so the write
		// commits. TransactionalConfig.ReadOnly documents this.
		err = f.run(context.Background(), func(ctx context.Context) error {
			return insertOrder(ctx, "o-2", 2)
		})
		switch d {
		case testdb.Postgres:
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			require.Equal(t, "25006", pgErr.Code, "read_only_sql_transaction")
			require.Zero(t, f.orderCount(t, "id = 'o-2'"))
		case testdb.SQLite:
			require.NoError(t, err)
			require.Equal(t, int64(1), f.orderCount(t, "id = 'o-2'"))
		}
	})
}

func TestAfterCommit(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		type call struct {
			fn     string
			params middleware.AfterCommitParams
		}
		var calls []call
		f := newFixture(t, d, withConfig(func(c *middleware.TransactionalConfig) {
			c.AfterCommit = []func(middleware.AfterCommitParams){
				func(p middleware.AfterCommitParams) {
					calls = append(calls, call{"first", p})
				},
				func(p middleware.AfterCommitParams) {
					calls = append(calls, call{"second", p})
				},
			}
		}))
		type ctxKey struct{}
		ctx := context.WithValue(context.Background(), ctxKey{}, "mine")

		// A command with events: each callback once, in order, after commit.
		var cmdID string
		require.NoError(t, f.run(ctx, func(ctx context.Context) error {
			cmdID = commandOf(t, ctx).ID
			require.NoError(t, insertOrder(ctx, "o-1", 1))
			return outbox.Emit(ctx, OrderPlaced{OrderID: "o-1"}, AuditLogged{Seq: 1})
		}))
		require.Len(t, calls, 2)
		require.Equal(t, "first", calls[0].fn)
		require.Equal(t, "second", calls[1].fn)
		p := calls[0].params
		require.Equal(t, "mine", p.Ctx.Value(ctxKey{}), "Ctx is the dispatch context")
		require.Equal(t, cmdID, p.Command.ID)
		require.Equal(t, "do", p.Command.Name)
		rows := f.outbox(t)
		require.Len(t, p.Records, 2)
		for i, r := range p.Records {
			require.Equal(t, rows[i].UUID, r.Message.UUID)
			require.Equal(t, rows[i].Topic, r.Topic)
			require.Equal(t, rows[i].PartitionKey, r.PartitionKey)
		}

		// No events: no call.
		require.NoError(t, f.run(ctx, func(ctx context.Context) error { return insertOrder(ctx, "o-2", 2) }))
		// Rollback: no call.
		require.Error(t, f.run(ctx, func(ctx context.Context) error {
			require.NoError(t, outbox.Emit(ctx, AuditLogged{Seq: 2}))
			return errors.New("no")
		}))
		// Encoding failure: no call.
		require.ErrorIs(t, f.run(ctx, func(ctx context.Context) error {
			return outbox.Emit(ctx, badEvent{F: func() {}})
		}), outbox.ErrMarshal)
		require.Len(t, calls, 2)

		// A second command with events: called again with its own records.
		require.NoError(t, f.run(ctx, func(ctx context.Context) error {
			return outbox.Emit(ctx, AuditLogged{Seq: 3})
		}))
		require.Len(t, calls, 4)
		require.Len(t, calls[2].params.Records, 1)
		require.JSONEq(t, `{"seq":3}`, string(calls[2].params.Records[0].Message.Payload))
	})
}

// wakeCounter is a middleware.Waker that counts its wake-ups.
type wakeCounter struct{ n atomic.Int64 }

func (w *wakeCounter) Wake() { w.n.Add(1) }

// Wake is woken once per committed command with events, never for one
// without events or rolled back.
func TestWake(t *testing.T) {
	t.Parallel()
	w := &wakeCounter{}
	f := newFixture(t, testdb.SQLite, withConfig(func(c *middleware.TransactionalConfig) { c.Wake = w }))
	ctx := context.Background()
	require.NoError(t, f.run(ctx, func(ctx context.Context) error { return outbox.Emit(ctx, AuditLogged{Seq: 1}, AuditLogged{Seq: 2}) }))
	require.EqualValues(t, 1, w.n.Load())
	require.NoError(t, f.run(ctx, func(ctx context.Context) error { return insertOrder(ctx, "o-1", 1) }))
	require.Error(t, f.run(ctx, func(ctx context.Context) error {
		require.NoError(t, outbox.Emit(ctx, AuditLogged{Seq: 3}))
		return errors.New("no")
	}))
	require.EqualValues(t, 1, w.n.Load())
}

func TestAfterCommitSeesCommittedRows(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		var visible int64 = -1
		var f *fixture
		f = newFixture(t, d, withConfig(func(c *middleware.TransactionalConfig) {
			c.AfterCommit = []func(middleware.AfterCommitParams){func(p middleware.AfterCommitParams) {
				// A forwarder woken here must find the rows.
				visible = testdb.Count(t, f.db, gormstore.DefaultTable, "")
			}}
		}))
		require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
			return outbox.Emit(ctx, AuditLogged{Seq: 1}, AuditLogged{Seq: 2})
		}))
		require.Equal(t, int64(2), visible)
	})
}

func TestRunWithoutBus(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.SQLite)
	errStop := errors.New("stop")
	err := f.tm.Run(context.Background(), "Custom", func(ctx context.Context) error {
		require.NoError(t, insertOrder(ctx, "o-1", 1))
		require.NoError(t, outbox.Emit(ctx, AuditLogged{Seq: 1}))
		return fmt.Errorf("custom: %w", errStop)
	})
	require.ErrorIs(t, err, errStop)
	f.requireNothingSaved(t)

	require.NoError(t, f.tm.Run(context.Background(), "Custom", func(ctx context.Context) error {
		return outbox.Emit(ctx, AuditLogged{Seq: 2})
	}))
	rows := f.outbox(t)
	require.Len(t, rows, 1)
	require.Equal(t, "Custom", rows[0].meta(t)[outbox.MetadataCommand])
}
