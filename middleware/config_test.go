package middleware_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	gormmysql "gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
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

// txProbe reads the isolation level and read-only flag of the transaction
// tx is in, in the dialect's words.
type txProbe func(t *testing.T, tx *gorm.DB) (level string, readOnly bool)

// probePostgres reads the transaction's settings.
func probePostgres(t *testing.T, tx *gorm.DB) (string, bool) {
	t.Helper()
	var level, ro string
	require.NoError(t, tx.Raw("SHOW transaction_isolation").Scan(&level).Error)
	require.NoError(t, tx.Raw("SHOW transaction_read_only").Scan(&ro).Error)
	return level, ro == "on"
}

// mysqlProbe returns a probe of MySQL transactions on db, which it sets up.
// MySQL has no statement that names the current transaction's level (the
// session variables name the next transactions'; information_schema's
// innodb_trx is a cache refreshed at most every 100 ms), so the probe tells
// them apart by what they do, next to transactions of a second pool: a
// write is refused in a read-only transaction; SERIALIZABLE locks the rows
// it reads; READ UNCOMMITTED sees a write not yet committed; READ
// COMMITTED sees a commit made after its first read, REPEATABLE READ does
// not.
func mysqlProbe(t *testing.T, db *gorm.DB) txProbe {
	t.Helper()
	require.NoError(t, db.Exec("CREATE TABLE probe (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)").Error)
	require.NoError(t, db.Exec("INSERT INTO probe VALUES (1, 0), (2, 0)").Error)
	other, err := gorm.Open(gormmysql.Open(testdb.MySQLDSN(t, db.Migrator().CurrentDatabase())), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	otherDB, err := other.DB()
	require.NoError(t, err)
	t.Cleanup(func() { _ = otherDB.Close() })

	read := func(tx *gorm.DB, id int) int {
		var v int
		require.NoError(t, tx.Raw("SELECT v FROM probe WHERE id = ?", id).Scan(&v).Error)
		return v
	}
	return func(t *testing.T, tx *gorm.DB) (string, bool) {
		t.Helper()
		var readOnly bool
		if err := tx.Exec("UPDATE probe SET v = v WHERE 1 = 0").Error; err != nil {
			var myErr *mysql.MySQLError
			require.ErrorAs(t, err, &myErr)
			require.Equal(t, uint16(1792), myErr.Number, "ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION")
			readOnly = true
		}
		before := read(tx, 1)

		locked := other.Transaction(func(otx *gorm.DB) error {
			var v int
			return otx.Raw("SELECT v FROM probe WHERE id = 1 FOR UPDATE NOWAIT").Scan(&v).Error
		})
		if locked != nil {
			return "SERIALIZABLE", readOnly
		}

		errRollback := errors.New("rollback")
		var dirty int
		require.ErrorIs(t, other.Transaction(func(otx *gorm.DB) error {
			require.NoError(t, otx.Exec("UPDATE probe SET v = v + 1 WHERE id = 2").Error)
			dirty = read(tx, 2) - read(otx, 2)
			return errRollback
		}), errRollback)
		if dirty == 0 {
			return "READ UNCOMMITTED", readOnly
		}

		require.NoError(t, other.Exec("UPDATE probe SET v = v + 1 WHERE id = 1").Error)
		if read(tx, 1) != before {
			return "READ COMMITTED", readOnly
		}
		return "REPEATABLE READ", readOnly
	}
}

// TestIsolationLevelIsApplied: each command's transaction runs at the
// configured level and read-only setting, and a command leaves them on
// its connection to nobody: a plain transaction on the same connection
// afterwards has the database's defaults.
func TestIsolationLevelIsApplied(t *testing.T) {
	t.Parallel()
	dialects := map[testdb.Dialect]struct {
		probe func(t *testing.T, db *gorm.DB) txProbe
		want  map[sql.IsolationLevel]string
	}{
		testdb.Postgres: {func(*testing.T, *gorm.DB) txProbe { return probePostgres }, map[sql.IsolationLevel]string{
			sql.LevelReadCommitted:  "read committed",
			sql.LevelRepeatableRead: "repeatable read",
			sql.LevelSerializable:   "serializable",
		}},
		testdb.MySQL: {mysqlProbe, map[sql.IsolationLevel]string{
			sql.LevelReadUncommitted: "READ UNCOMMITTED",
			sql.LevelReadCommitted:   "READ COMMITTED",
			sql.LevelRepeatableRead:  "REPEATABLE READ",
			sql.LevelSerializable:    "SERIALIZABLE",
		}},
	}
	for d, tc := range dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			db := testdb.Open(t, d)
			require.NoError(t, gormstore.Migrate(context.Background(), db))
			sqlDB, err := db.DB()
			require.NoError(t, err)
			sqlDB.SetMaxOpenConns(1) // every transaction on one connection
			probe := tc.probe(t, db)
			store, err := gormstore.New(db, gormstore.Config{})
			require.NoError(t, err)

			plain := func() (string, bool) {
				var level string
				var ro bool
				require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
					level, ro = probe(t, tx)
					return nil
				}))
				return level, ro
			}
			defaultLevel, ro := plain()
			require.False(t, ro)
			want := map[sql.IsolationLevel]string{sql.LevelDefault: defaultLevel}
			for iso, level := range tc.want {
				want[iso] = level
			}
			for iso, level := range want {
				for _, readOnly := range []bool{false, true} {
					tm, err := middleware.NewTransactional(middleware.TransactionalConfig{
						DB: db, Store: store, Isolation: iso, ReadOnly: readOnly,
					})
					require.NoError(t, err)
					var gotLevel string
					var gotRO bool
					require.NoError(t, tm.Run(context.Background(), "Probe", func(ctx context.Context) error {
						tx, err := outbox.Tx(ctx)
						require.NoError(t, err)
						gotLevel, gotRO = probe(t, tx)
						return nil
					}))
					require.Equal(t, level, gotLevel, "%v read-only=%v", iso, readOnly)
					require.Equal(t, readOnly, gotRO, "%v read-only=%v", iso, readOnly)

					afterLevel, afterRO := plain()
					require.Equal(t, defaultLevel, afterLevel, "the next transaction after %v read-only=%v", iso, readOnly)
					require.False(t, afterRO, "the next transaction after %v read-only=%v", iso, readOnly)
				}
			}
		})
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

		// Business writes: PostgreSQL and MySQL enforce the read-only
		// transaction;
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
		case testdb.MySQL:
			var myErr *mysql.MySQLError
			require.ErrorAs(t, err, &myErr)
			require.Equal(t, uint16(1792), myErr.Number, "ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION")
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
