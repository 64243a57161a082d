package retention_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/retention"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

const (
	outboxTable = gormstore.DefaultTable
	inboxTable  = inbox.DefaultTable
)

// tables returns a KeepDelivered outbox store and an inbox on db, both
// migrated.
func tables(t *testing.T, db *gorm.DB) (*gormstore.Store, *inbox.Inbox) {
	t.Helper()
	ctx := context.Background()
	store, err := gormstore.New(db, gormstore.Config{KeepDelivered: true})
	require.NoError(t, err)
	require.NoError(t, store.Migrate(ctx))
	in, err := inbox.New(db, inbox.Config{})
	require.NoError(t, err)
	require.NoError(t, in.Migrate(ctx))
	return store, in
}

func isPostgres(db *gorm.DB) bool { return db.Dialector.Name() == "postgres" }

func isMySQL(db *gorm.DB) bool { return db.Dialector.Name() == "mysql" }

// insertRows inserts rows into table in one multi-row INSERT. The MySQL
// seeds build their rows here rather than in SQL: MySQL 8 stops a recursive
// CTE after 1000 rows (cte_max_recursion_depth).
func insertRows(t *testing.T, db *gorm.DB, table string, cols []string, rows [][]any) {
	t.Helper()
	tuple := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ") + ")"
	tuples := make([]string, len(rows))
	args := make([]any, 0, len(rows)*len(cols))
	for i, r := range rows {
		tuples[i] = tuple
		args = append(args, r...)
	}
	require.NoError(t, db.Exec(`INSERT INTO `+table+` (`+strings.Join(cols, ", ")+`) VALUES `+strings.Join(tuples, ", "), args...).Error)
}

// sqliteTime formats t as the store's SQLite driver does.
func sqliteTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000000+00:00") }

// seedOutbox inserts n outbox rows "<prefix>-<i>" in state "pending",
// "parked" or "delivered", stamped (created_at and delivered_at or
// failed_at) age ago, one second apart, in SQL.
func seedOutbox(t *testing.T, db *gorm.DB, prefix, state string, n int, age time.Duration) {
	t.Helper()
	delivered, failed := "NULL", "NULL"
	switch state {
	case "delivered":
		delivered = "ts"
	case "parked":
		failed = "ts"
	}
	if isMySQL(db) {
		now := time.Now().UTC()
		rows := make([][]any, n)
		for i := range rows {
			g := i + 1
			ts := now.Add(-age - time.Duration(g)*time.Second)
			var deliveredAt, failedAt *time.Time
			switch state {
			case "delivered":
				deliveredAt = &ts
			case "parked":
				failedAt = &ts
			}
			rows[i] = []any{fmt.Sprint(prefix, "-", g), "orders", fmt.Sprint("key-", g%5), []byte{0}, "{}", ts, ts, deliveredAt, failedAt}
		}
		insertRows(t, db, outboxTable,
			[]string{"uuid", "topic", "partition_key", "payload", "metadata", "created_at", "next_attempt_at", "delivered_at", "failed_at"}, rows)
		return
	}
	cols := `(uuid, topic, partition_key, payload, created_at, next_attempt_at, delivered_at, failed_at)`
	if isPostgres(db) {
		require.NoError(t, db.Exec(`INSERT INTO `+outboxTable+` `+cols+`
SELECT ? || '-' || g, 'orders', 'key-' || (g % 5), '\x00', ts, ts, `+delivered+`, `+failed+`
FROM generate_series(1, ?) AS g, LATERAL (SELECT now() - ?::bigint * interval '1 microsecond' - g * interval '1 second' AS ts) AS t`,
			prefix, n, age.Microseconds()).Error)
		return
	}
	require.NoError(t, db.Exec(`WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < ?),
t AS (SELECT g, strftime('%Y-%m-%d %H:%M:%f+00:00', ?, '-' || g || ' seconds') AS ts FROM s)
INSERT INTO `+outboxTable+` `+cols+`
SELECT ? || '-' || g, 'orders', 'key-' || (g % 5), x'00', ts, ts, `+delivered+`, `+failed+` FROM t`,
		n, sqliteTime(time.Now().Add(-age)), prefix).Error)
}

// seedInbox inserts n inbox rows of consumer "<prefix>", received age ago,
// one second apart, in SQL.
func seedInbox(t *testing.T, db *gorm.DB, prefix string, n int, age time.Duration) {
	t.Helper()
	if isMySQL(db) {
		now := time.Now().UTC()
		rows := make([][]any, n)
		for i := range rows {
			g := i + 1
			rows[i] = []any{prefix, fmt.Sprint("m-", g), now.Add(-age - time.Duration(g)*time.Second)}
		}
		insertRows(t, db, inboxTable, []string{"consumer", "message_uuid", "received_at"}, rows)
		return
	}
	if isPostgres(db) {
		require.NoError(t, db.Exec(`INSERT INTO `+inboxTable+` (consumer, message_uuid, received_at)
SELECT ?, 'm-' || g, now() - ?::bigint * interval '1 microsecond' - g * interval '1 second' FROM generate_series(1, ?) AS g`,
			prefix, age.Microseconds(), n).Error)
		return
	}
	require.NoError(t, db.Exec(`WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < ?)
INSERT INTO `+inboxTable+` (consumer, message_uuid, received_at)
SELECT ?, 'm-' || g, strftime('%Y-%m-%dT%H:%M:%f000000Z', ?, '-' || g || ' seconds') FROM s`,
		n, prefix, time.Now().UTC().Add(-age).Format("2006-01-02 15:04:05.000")).Error)
}

// seedAll fills both tables with rows due for deletion (old) and rows to
// keep, and returns how many are due in each.
func seedAll(t *testing.T, db *gorm.DB, scale int) (outboxDue, inboxDue int64) {
	t.Helper()
	seedOutbox(t, db, "old", "delivered", 5*scale, 3*24*time.Hour)
	seedOutbox(t, db, "young", "delivered", scale, time.Hour)
	seedOutbox(t, db, "pending", "pending", scale, 5*24*time.Hour)
	seedOutbox(t, db, "parked", "parked", scale, 5*24*time.Hour)
	seedInbox(t, db, "old", 3*scale, 10*24*time.Hour)
	seedInbox(t, db, "young", scale, time.Hour)
	return int64(5 * scale), int64(3 * scale)
}

// checkKept checks that only the rows to keep are left.
func checkKept(t *testing.T, db *gorm.DB, scale int) {
	t.Helper()
	require.Zero(t, testdb.Count(t, db, outboxTable, "uuid LIKE 'old-%'"))
	require.EqualValues(t, scale, testdb.Count(t, db, outboxTable, "uuid LIKE 'young-%'"))
	require.EqualValues(t, scale, testdb.Count(t, db, outboxTable, "uuid LIKE 'pending-%'"), "pending rows are never purged")
	require.EqualValues(t, scale, testdb.Count(t, db, outboxTable, "uuid LIKE 'parked-%'"), "parked rows are never purged")
	require.Zero(t, testdb.Count(t, db, inboxTable, "consumer = 'old'"))
	require.EqualValues(t, scale, testdb.Count(t, db, inboxTable, "consumer = 'young'"))
}

func retentionConfig(store *gormstore.Store, in *inbox.Inbox) retention.Config {
	return retention.Config{
		Outbox:          store,
		Inbox:           in,
		OutboxRetention: 24 * time.Hour,
		InboxRetention:  7 * 24 * time.Hour,
		BatchSize:       7,
		Logger:          slog.New(slog.DiscardHandler),
	}
}

func TestRunOnce(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		store, in := tables(t, db)
		const scale = 20
		outboxDue, inboxDue := seedAll(t, db, scale)
		c, err := retention.New(retentionConfig(store, in))
		require.NoError(t, err)

		res, err := c.RunOnce(context.Background())
		require.NoError(t, err)
		require.Equal(t, outboxDue, res.OutboxDeleted)
		require.Equal(t, inboxDue, res.InboxDeleted)
		require.Positive(t, res.Duration)
		checkKept(t, db, scale)

		res, err = c.RunOnce(context.Background())
		require.NoError(t, err)
		require.Zero(t, res.OutboxDeleted+res.InboxDeleted, "nothing left to delete")
	})
}

// TestRunOnceOneTable cleans only the table it is given.
func TestRunOnceOneTable(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.SQLite)
	store, in := tables(t, db)
	seedAll(t, db, 4)

	cfg := retentionConfig(nil, in)
	c, err := retention.New(cfg)
	require.NoError(t, err)
	res, err := c.RunOnce(context.Background())
	require.NoError(t, err)
	require.Equal(t, retention.Result{InboxDeleted: 12, Duration: res.Duration}, res)
	require.EqualValues(t, 20, testdb.Count(t, db, outboxTable, "uuid LIKE 'old-%'"))

	cfg = retentionConfig(store, nil)
	c, err = retention.New(cfg)
	require.NoError(t, err)
	res, err = c.RunOnce(context.Background())
	require.NoError(t, err)
	require.EqualValues(t, 20, res.OutboxDeleted)
	require.Zero(t, res.InboxDeleted)
	checkKept(t, db, 4)
}

// TestConcurrentCleaners runs two cleaners at once, each on its own
// connection pool as on two instances, over many small batches: neither
// fails, and together they delete every due row exactly once.
func TestConcurrentCleaners(t *testing.T) {
	t.Parallel()
	for _, d := range testdb.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			const scale = 400
			var dbs [2]*gorm.DB
			switch d {
			case testdb.Postgres:
				var schema string
				dbs[0], schema = testdb.OpenPostgres(t)
				dbs[1] = testdb.OpenURL(t, testdb.SchemaURL(t, schema))
			case testdb.MySQL:
				var name string
				dbs[0], name = testdb.OpenMySQL(t)
				dbs[1] = openMySQL(t, testdb.MySQLDSN(t, name))
			default:
				dbs[0] = testdb.OpenSQLite(t)
				dbs[1] = dbs[0]
			}
			tables(t, dbs[0])
			outboxDue, inboxDue := seedAll(t, dbs[0], scale)

			var results [2]retention.Result
			var errs [2]error
			var deadlocks atomic.Int32
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i, db := range dbs {
				store, in := tables(t, db)
				cfg := retentionConfig(store, in)
				cfg.BatchSize = 25
				c, err := retention.New(cfg)
				require.NoError(t, err)
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					// On MySQL two cleaners' DELETE ... ORDER BY ... LIMIT
					// batches can deadlock; the loser's run fails, having
					// counted what it deleted, and its next run deletes
					// what is left.
					for range 5 {
						res, err := c.RunOnce(context.Background())
						results[i].OutboxDeleted += res.OutboxDeleted
						results[i].InboxDeleted += res.InboxDeleted
						errs[i] = err
						if d != testdb.MySQL || !isDeadlock(err) {
							return
						}
						deadlocks.Add(1)
					}
				}()
			}
			close(start)
			wg.Wait()
			if n := deadlocks.Load(); n > 0 {
				t.Logf("%d cleaner runs failed with a deadlock and ran again", n)
			}
			require.NoError(t, errs[0])
			require.NoError(t, errs[1])
			require.Equal(t, outboxDue, results[0].OutboxDeleted+results[1].OutboxDeleted, "%+v", results)
			require.Equal(t, inboxDue, results[0].InboxDeleted+results[1].InboxDeleted, "%+v", results)
			checkKept(t, dbs[0], scale)
		})
	}
}

// isDeadlock reports whether err is an InnoDB deadlock (1213).
func isDeadlock(err error) bool {
	var myErr *gomysql.MySQLError
	return errors.As(err, &myErr) && myErr.Number == 1213
}

// openMySQL opens a second pool on a MySQL database, closed when t ends.
func openMySQL(t *testing.T, dsn string) *gorm.DB {
	t.Helper()
	db, err := gorm.Open(mysql.Open(dsn), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	sqlDB, err := db.DB()
	require.NoError(t, err)
	t.Cleanup(func() { _ = sqlDB.Close() })
	return db
}

// TestRun runs the loop: a first run at once, later runs pick up rows that
// became due, OnRun sees every run, and Run returns nil when ctx ends.
func TestRun(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.Postgres)
	store, in := tables(t, db)
	seedAll(t, db, 3)
	var logs bytes.Buffer
	var mu sync.Mutex
	var runs []retention.OnRunParams
	cfg := retentionConfig(store, in)
	cfg.Interval = 20 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(&syncWriter{w: &logs, mu: &mu}, nil))
	cfg.OnRun = func(p retention.OnRunParams) {
		mu.Lock()
		defer mu.Unlock()
		runs = append(runs, p)
	}
	c, err := retention.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(runs) >= 1
	}, 10*time.Second, 5*time.Millisecond)
	seedOutbox(t, db, "later", "delivered", 4, 2*24*time.Hour)
	// Wait for the run that deleted the later rows to report them: a run
	// canceled after its DELETE and before its report would not count.
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		var n int64
		for _, r := range runs {
			n += r.Result.OutboxDeleted
		}
		return n >= 15+4
	}, 10*time.Second, 5*time.Millisecond)
	require.Zero(t, testdb.Count(t, db, outboxTable, "uuid LIKE 'later-%'"))
	cancel()
	require.NoError(t, <-done)

	mu.Lock()
	defer mu.Unlock()
	var outboxDeleted, inboxDeleted int64
	for _, r := range runs {
		require.NoError(t, r.Err)
		outboxDeleted += r.Result.OutboxDeleted
		inboxDeleted += r.Result.InboxDeleted
	}
	require.EqualValues(t, 15+4, outboxDeleted)
	require.EqualValues(t, 9, inboxDeleted)
	require.Contains(t, logs.String(), "retention run deleted rows")
	require.Contains(t, logs.String(), "outbox_deleted=15")
}

type syncWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// fakePurger fails its first calls, then deletes nothing.
type fakePurger struct {
	failures atomic.Int32
	calls    atomic.Int32
}

func (f *fakePurger) PurgeDeliveredBatch(context.Context, time.Duration, int) (int64, error) {
	f.calls.Add(1)
	if f.failures.Add(-1) >= 0 {
		return 3, errors.New("connection refused")
	}
	return 0, nil
}

// TestRunFailureRetried: a failed run is logged with its error and
// reported, and the next run retries; the inbox is still cleaned in the
// failed run.
func TestRunFailureRetried(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.SQLite)
	_, in := tables(t, db)
	seedInbox(t, db, "old", 5, 10*24*time.Hour)
	purger := &fakePurger{}
	purger.failures.Store(2)
	var logs bytes.Buffer
	var mu sync.Mutex
	results := make(chan retention.OnRunParams, 100)
	c, err := retention.New(retention.Config{
		Outbox:   purger,
		Inbox:    in,
		Interval: time.Millisecond,
		Logger:   slog.New(slog.NewTextHandler(&syncWriter{w: &logs, mu: &mu}, nil)),
		OnRun:    func(p retention.OnRunParams) { results <- p },
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	first := <-results
	require.ErrorContains(t, first.Err, "retention: outbox: connection refused")
	require.Equal(t, int64(3), first.Result.OutboxDeleted, "counts survive an error")
	require.Equal(t, int64(5), first.Result.InboxDeleted, "the inbox is cleaned although the outbox failed")
	require.Error(t, (<-results).Err)
	require.NoError(t, (<-results).Err)
	cancel()
	require.NoError(t, <-done)
	mu.Lock()
	defer mu.Unlock()
	require.Contains(t, logs.String(), "level=WARN msg=\"retention run failed; retrying at the next interval\"")
}

// TestRunOnceCanceled stops between batches when ctx ends.
func TestRunOnceCanceled(t *testing.T) {
	t.Parallel()
	purger := &fakePurger{}
	c, err := retention.New(retention.Config{Outbox: purger})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = c.RunOnce(ctx)
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, purger.calls.Load())
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	err := retention.Config{Interval: -1, OutboxRetention: -1, InboxRetention: -1, BatchSize: -1}.Validate()
	require.ErrorIs(t, err, retention.ErrInvalidConfig)
	for _, want := range []string{"nothing to clean", "Interval", "OutboxRetention", "InboxRetention", "BatchSize"} {
		require.ErrorContains(t, err, want)
	}
	require.Len(t, strings.Split(err.Error(), "\n"), 5, "one line per problem")

	err = retention.Config{Outbox: &fakePurger{}, BatchSize: retention.MaxBatchSize + 1}.Validate()
	require.ErrorIs(t, err, retention.ErrInvalidConfig)
	_, err = retention.New(retention.Config{})
	require.ErrorIs(t, err, retention.ErrInvalidConfig)

	require.NoError(t, retention.Config{Inbox: &inbox.Inbox{}}.Validate())
	d := retention.Config{Outbox: &fakePurger{}}.WithDefaults()
	require.Equal(t, retention.DefaultInterval, d.Interval)
	require.Equal(t, retention.DefaultOutboxRetention, d.OutboxRetention)
	require.Equal(t, retention.DefaultInboxRetention, d.InboxRetention)
	require.Equal(t, retention.DefaultBatchSize, d.BatchSize)
	require.NotNil(t, d.Logger)
}
