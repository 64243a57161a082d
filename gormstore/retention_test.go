package gormstore_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"gorm.io/gorm"
)

// seedRows inserts n rows of one state into the default outbox table, with
// created_at and delivered_at or failed_at set age ago by SQL: the
// database clock on PostgreSQL, the local clock (as the store stamps rows)
// on SQLite. state is "pending", "parked" or "delivered"; uuids are
// "<prefix>-<i>".
func seedRows(t *testing.T, db *gorm.DB, prefix, state string, n int, age time.Duration) {
	t.Helper()
	var delivered, failed string
	switch state {
	case "delivered":
		delivered = "ts"
	case "parked":
		failed = "ts"
	}
	col := func(set string) string {
		if set == "" {
			return "NULL"
		}
		return set
	}
	var q string
	var args []any
	if db.Dialector.Name() == "postgres" {
		q = `INSERT INTO txoutbox_outbox (uuid, topic, partition_key, payload, created_at, next_attempt_at, attempts, delivered_at, failed_at)
SELECT ? || '-' || g, 'orders', 'key-' || (g % 7), '\x00', ts, ts, 0, ` + col(delivered) + `, ` + col(failed) + `
FROM generate_series(1, ?) AS g, LATERAL (SELECT now() - ?::bigint * interval '1 microsecond' - g * interval '1 millisecond' AS ts) AS t`
		args = []any{prefix, n, age.Microseconds()}
	} else if db.Dialector.Name() == "mysql" {
		// Numbers 1..n from digits: MySQL bounds recursive CTEs at 1,000 rows.
		q = `INSERT INTO txoutbox_outbox (uuid, topic, partition_key, payload, created_at, next_attempt_at, attempts, delivered_at, failed_at)
SELECT CONCAT(?, '-', g), 'orders', CONCAT('key-', g % 7), x'00', ts, ts, 0, ` + col(delivered) + `, ` + col(failed) + `
FROM (SELECT g, UTC_TIMESTAMP(6) - INTERVAL (? + 1000 * g) MICROSECOND AS ts FROM (
	SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d + 1 AS g
	FROM ` + digits("a") + `, ` + digits("b") + `, ` + digits("c") + `, ` + digits("e") + `, ` + digits("f") + `
) n WHERE g <= ?) t`
		args = []any{prefix, age.Microseconds(), n}
	} else {
		q = `WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < ?),
t AS (SELECT g, strftime('%Y-%m-%d %H:%M:%f+00:00', ?, '-' || g || ' seconds') AS ts FROM s)
INSERT INTO txoutbox_outbox (uuid, topic, partition_key, payload, created_at, next_attempt_at, attempts, delivered_at, failed_at)
SELECT ? || '-' || g, 'orders', 'key-' || (g % 7), x'00', ts, ts, 0, ` + col(delivered) + `, ` + col(failed) + ` FROM t`
		args = []any{n, time.Now().UTC().Add(-age).Format("2006-01-02 15:04:05.000"), prefix}
	}
	require.NoError(t, db.Exec(q, args...).Error)
}

// digits is a derived table of the digits 0-9 in column d, named name.
func digits(name string) string {
	return `(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
	UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) AS ` + name
}

// purgeAll calls PurgeDeliveredBatch until a batch comes back short and
// returns the rows deleted.
func purgeAll(t *testing.T, s *gormstore.Store, olderThan time.Duration, limit int) int64 {
	t.Helper()
	var total int64
	for {
		n, err := s.PurgeDeliveredBatch(context.Background(), olderThan, limit)
		require.NoError(t, err)
		total += n
		if n < int64(limit) {
			return total
		}
	}
}

func TestPurgeDeliveredBatch(t *testing.T) {
	t.Parallel()
	for _, d := range testdb.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			s, db := migrated(t, d, gormstore.Config{KeepDelivered: true})
			seedRows(t, db, "old", "delivered", 25, 72*time.Hour)
			seedRows(t, db, "young", "delivered", 10, time.Hour)
			seedRows(t, db, "pending", "pending", 5, 96*time.Hour)
			seedRows(t, db, "parked", "parked", 5, 96*time.Hour)
			ctx := context.Background()

			// One batch: the oldest deliveries first.
			n, err := s.PurgeDeliveredBatch(ctx, 24*time.Hour, 10)
			require.NoError(t, err)
			require.EqualValues(t, 10, n)
			require.Zero(t, testdb.Count(t, db, gormstore.DefaultTable, "uuid IN ('old-16', 'old-20', 'old-25')"), "the oldest go first")
			require.EqualValues(t, 15, testdb.Count(t, db, gormstore.DefaultTable, "uuid LIKE 'old-%'"))

			require.EqualValues(t, 15, purgeAll(t, s, 24*time.Hour, 10))
			require.Zero(t, testdb.Count(t, db, gormstore.DefaultTable, "uuid LIKE 'old-%'"))
			require.EqualValues(t, 20, testdb.Count(t, db, gormstore.DefaultTable, ""), "young delivered, pending and parked rows stay")

			// Age 0: every delivered row, never a pending or parked one.
			require.EqualValues(t, 10, purgeAll(t, s, 0, 3))
			require.EqualValues(t, 10, testdb.Count(t, db, gormstore.DefaultTable, "delivered_at IS NULL"))
			require.EqualValues(t, 10, testdb.Count(t, db, gormstore.DefaultTable, ""))
		})
	}
}

func TestPurgeDeliveredBatchInvalid(t *testing.T) {
	t.Parallel()
	s, _ := migrated(t, testdb.SQLite, gormstore.Config{KeepDelivered: true})
	_, err := s.PurgeDeliveredBatch(context.Background(), -time.Second, 10)
	require.ErrorIs(t, err, gormstore.ErrInvalidConfig)
	_, err = s.PurgeDeliveredBatch(context.Background(), time.Hour, 0)
	require.ErrorIs(t, err, gormstore.ErrInvalidConfig)
}

// TestPurgeDeliveredConcurrent runs four purgers on one PostgreSQL table at
// once: they never fail, and together they delete every due row exactly
// once.
func TestPurgeDeliveredConcurrent(t *testing.T) {
	t.Parallel()
	s, db := migrated(t, testdb.Postgres, gormstore.Config{KeepDelivered: true})
	seedRows(t, db, "old", "delivered", 5000, 48*time.Hour)
	seedRows(t, db, "young", "delivered", 300, time.Minute)
	const purgers = 4
	totals := make([]int64, purgers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range purgers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				n, err := s.PurgeDeliveredBatch(context.Background(), time.Hour, 50)
				if err != nil {
					t.Errorf("purger %d: %v", i, err)
					return
				}
				totals[i] += n
				if n == 0 {
					return
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	var sum int64
	for _, n := range totals {
		sum += n
	}
	require.EqualValues(t, 5000, sum, "per purger: %v", totals)
	require.EqualValues(t, 300, testdb.Count(t, db, gormstore.DefaultTable, ""))
}

// TestPurgeDeliveredUsesIndex checks the purge's plan on PostgreSQL with
// many kept rows: it reads the delivered_at index, never the whole table,
// both when rows are due and when none is.
func TestPurgeDeliveredUsesIndex(t *testing.T) {
	t.Parallel()
	s, db := migrated(t, testdb.Postgres, gormstore.Config{KeepDelivered: true})
	seedRows(t, db, "old", "delivered", 2000, 48*time.Hour)
	seedRows(t, db, "young", "delivered", 50000, time.Minute)
	seedRows(t, db, "pending", "pending", 100, 0)
	require.NoError(t, db.Exec(`ANALYZE txoutbox_outbox`).Error)
	for _, age := range []time.Duration{time.Hour, 30 * 24 * time.Hour} {
		q, args := s.PurgeDeliveredSQL(age, 1000)
		var plan []string
		require.NoError(t, db.Raw(`EXPLAIN `+q, args...).Scan(&plan).Error)
		text := strings.Join(plan, "\n")
		require.Contains(t, text, "txoutbox_outbox_delivered_idx", "age %v, plan:\n%s", age, text)
		require.NotContains(t, text, "Seq Scan", "age %v, plan:\n%s", age, text)
	}
}

// TestPurgeDeliveredUsesIndexSQLite checks that SQLite finds the batch
// through the delivered_at index.
func TestPurgeDeliveredUsesIndexSQLite(t *testing.T) {
	t.Parallel()
	s, db := migrated(t, testdb.SQLite, gormstore.Config{KeepDelivered: true})
	q, args := s.PurgeDeliveredSQL(time.Hour, 1000)
	var plan []struct{ Detail string }
	require.NoError(t, db.Raw(`EXPLAIN QUERY PLAN `+q, args...).Scan(&plan).Error)
	var text []string
	for _, p := range plan {
		text = append(text, p.Detail)
	}
	require.Contains(t, strings.Join(text, "\n"), "txoutbox_outbox_delivered_idx", "plan:\n%s", strings.Join(text, "\n"))
}
