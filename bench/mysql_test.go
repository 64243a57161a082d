package bench_test

import (
	"context"
	"database/sql"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// The MySQL/MariaDB rows of BenchmarkRelay drain the same backlog as the
// PostgreSQL rows (the events of newOrder on eventKeys keys) from a fresh
// database of testdb.OpenMySQL, whose DSN has parseTime and
// interpolateParams on. The server's commits flush the redo log as the
// server is configured (innodb_flush_log_at_trx_commit is global): every
// MySQL row, the floor included, commits the same way.

// stockMySQLTable is the stock path's table on MySQL.
const stockMySQLTable = "`watermill_" + stockForwarderTopic + "`"

// nativeStoreMySQL opens a fresh MySQL/MariaDB database and returns it with
// a store of cfg whose table is created.
func nativeStoreMySQL(tb testing.TB, cfg gormstore.Config) (*gorm.DB, *gormstore.Store) {
	tb.Helper()
	db, _ := testdb.OpenMySQL(tb)
	s, err := gormstore.New(db, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return db, s
}

// isMySQL reports whether db is a MySQL/MariaDB connection.
func isMySQL(db *gorm.DB) bool { return db.Dialector.Name() == "mysql" }

// mysqlFillChunk is the rows per INSERT of fillNativeMySQL.
const mysqlFillChunk = 50_000

// nativePayloadMySQL is newOrder(i) as JSON, for a row numbered i: the
// same text as nativePayloadSQL.
const nativePayloadMySQL = `CONCAT('{"order_id":"order-', LPAD(i, 9, '0'), '","customer_id":"customer-', LPAD(i % 50, 2, '0'),` +
	` '","amount_cents":12345,"currency":"EUR","lines":[{"sku":"SKU-', LPAD(i % 1000, 6, '0'),` +
	` '","qty":2,"price_cents":4999}],"note":"leave it at the door, ring twice"}')`

// fillNativeMySQL inserts rows 1..n into the native outbox table on
// MySQL/MariaDB, in the form the store's Save writes them, as fillNative
// does on PostgreSQL: one INSERT ... SELECT per mysqlFillChunk rows, in ID
// order, the numbers made by a join of digits (MySQL's recursive CTEs
// stop at 1,000 levels by default).
func fillNativeMySQL(tb testing.TB, db *gorm.DB, table string, n int) {
	tb.Helper()
	const digits = `(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
	UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)`
	q := `INSERT INTO ` + table + ` (uuid, topic, partition_key, payload, metadata, created_at, next_attempt_at)
SELECT UUID(), '` + eventTopic + `', k, ` + nativePayloadMySQL + `,
	JSON_OBJECT('name', '` + eventName + `', 'correlation_id', c, 'causation_id', c,
		'command', '` + commandName + `', 'partition_key', k,
		'created_at', DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%fZ')),
	UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)
FROM (SELECT i, UUID() AS c, CONCAT('customer-', LPAD(i % 50, 2, '0')) AS k
	FROM (SELECT ? + d0.d + 10*d1.d + 100*d2.d + 1000*d3.d + 10000*d4.d AS i
		FROM ` + digits + ` d0, ` + digits + ` d1, ` + digits + ` d2, ` + digits + ` d3, ` + digits + ` d4) AS nums
	WHERE i <= ?) AS s
ORDER BY i`
	for from := 1; from <= n; from += mysqlFillChunk {
		to := min(from+mysqlFillChunk-1, n)
		if err := db.Exec(q, from, to).Error; err != nil {
			tb.Fatalf("fill %s: %v", table, err)
		}
	}
	settle(tb, db, table)
}

// settleMySQL analyzes a freshly filled table, so every backend starts
// with the table's statistics known.
func settleMySQL(tb testing.TB, db *gorm.DB, table string) {
	tb.Helper()
	rows, err := db.Raw("ANALYZE TABLE " + table).Rows()
	if err != nil {
		tb.Fatalf("analyze %s: %v", table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, op, kind, text string
		if err := rows.Scan(&name, &op, &kind, &text); err != nil {
			tb.Fatalf("analyze %s: %v", table, err)
		}
		if kind == "error" {
			tb.Fatalf("analyze %s: %s", table, text)
		}
	}
	if err := rows.Err(); err != nil {
		tb.Fatalf("analyze %s: %v", table, err)
	}
}

// stockMySQLFillBatch is the events per transaction of fillStockMySQL.
const stockMySQLFillBatch = 1000

// fillStockMySQL writes events 1..n the stock way on MySQL/MariaDB: each
// event encoded by outbox.Encoder and published through a watermill-sql/v3
// Publisher of DefaultMySQLSchema on a transaction, wrapped by
// components/forwarder's Publisher, stockMySQLFillBatch events per
// transaction. The MySQL table has no transaction column, so its rows are
// the same however the events were grouped into transactions (unlike
// PostgreSQL's, see fillStock), and one transaction per event would wait
// for a redo log flush per event.
func fillStockMySQL(tb testing.TB, db *sql.DB, wlog watermill.LoggerAdapter, n int) {
	tb.Helper()
	ctx := context.Background()
	schema := wsql.DefaultMySQLSchema{}
	for _, q := range schema.SchemaInitializingQueries(stockForwarderTopic) {
		if _, err := db.ExecContext(ctx, q.Query, q.Args...); err != nil {
			tb.Fatalf("create stock table: %v", err)
		}
	}
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	for from := 1; from <= n; from += stockMySQLFillBatch {
		err := func() error {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer func() { _ = tx.Rollback() }()
			pub, err := wsql.NewPublisher(tx, wsql.PublisherConfig{SchemaAdapter: schema}, wlog)
			if err != nil {
				return err
			}
			fpub := forwarder.NewPublisher(pub, forwarder.PublisherConfig{ForwarderTopic: stockForwarderTopic})
			msgs := make([]*message.Message, 0, stockMySQLFillBatch)
			for i := from; i <= min(from+stockMySQLFillBatch-1, n); i++ {
				id := outbox.NewUUID()
				rec, err := enc.Encode(outbox.Entry{
					Event:   newOrder(i),
					Command: outbox.Command{ID: id, Name: commandName, CorrelationID: id},
				})
				if err != nil {
					return err
				}
				msgs = append(msgs, rec.Message)
			}
			if err := fpub.Publish(eventTopic, msgs...); err != nil {
				return err
			}
			return tx.Commit()
		}()
		if err != nil {
			tb.Fatalf("fill stock table: %v", err)
		}
	}
}

// newStockForwarderMySQL returns Watermill's stock forwarder reading the
// watermill-sql/v3 table on a MySQL/MariaDB db and publishing to out,
// configured as newStockForwarder on PostgreSQL: DefaultMySQLSchema with
// batches of 100, DefaultMySQLOffsetsAdapter, a 10 ms poll, schema
// initialised on subscribe.
func newStockForwarderMySQL(tb testing.TB, db *sql.DB, out message.Publisher, wlog watermill.LoggerAdapter) *forwarder.Forwarder {
	tb.Helper()
	sub, err := wsql.NewSubscriber(db, wsql.SubscriberConfig{
		SchemaAdapter:    wsql.DefaultMySQLSchema{SubscribeBatchSize: 100},
		OffsetsAdapter:   wsql.DefaultMySQLOffsetsAdapter{},
		PollInterval:     10 * time.Millisecond,
		InitializeSchema: true,
	}, wlog)
	if err != nil {
		tb.Fatal(err)
	}
	fwd, err := forwarder.NewForwarder(sub, out, wlog, forwarder.Config{ForwarderTopic: stockForwarderTopic})
	if err != nil {
		tb.Fatal(err)
	}
	return fwd
}

// drainStockMySQL relays the backlog with Watermill's stock forwarder on
// MySQL/MariaDB, as drainStock does on PostgreSQL, and returns the time
// from Run until the last message arrived.
func drainStockMySQL(b *testing.B, events int) drainResult {
	db, _ := testdb.OpenMySQL(b)
	sqlDB, err := db.DB()
	if err != nil {
		b.Fatal(err)
	}
	_, wlog := newLogs(b)
	fillStockMySQL(b, sqlDB, wlog, events)
	settle(b, db, stockMySQLTable)
	s := newSink(b, int64(events), nil)
	fwd := newStockForwarderMySQL(b, sqlDB, s.pubSub, wlog)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runtime.GC()

	cpu := sampleMySQLCPU(b, sqlDB)
	b.StartTimer()
	start := time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- fwd.Run(ctx) }()
	s.wait(b, drainTimeout)
	elapsed := time.Since(start)
	b.StopTimer()
	r := drainResult{elapsed: elapsed, cpu: sampleMySQLCPU(b, sqlDB).sub(cpu)}

	if err := fwd.Close(); err != nil {
		b.Fatalf("close stock forwarder: %v", err)
	}
	if err := <-runErr; err != nil {
		b.Fatalf("stock forwarder Run: %v", err)
	}
	return r
}

// drainFloorMySQL is the floor on MySQL/MariaDB: DELETE has no RETURNING
// there, so each batch is one transaction on one connection that reads
// the floorBatch oldest rows with a locking SELECT ... ORDER BY id LIMIT,
// scans them into outbox.Row values as the relay reads its claims, and
// deletes them by their ID range; nothing is published. What the server
// and go-sql-driver alone cost to take the rows out of the table.
func drainFloorMySQL(b *testing.B, events int) drainResult {
	db, store := nativeStoreMySQL(b, gormstore.Config{})
	ctx := context.Background()
	t := store.Table()
	fillNative(b, db, t, events)
	sqlDB, err := db.DB()
	if err != nil {
		b.Fatal(err)
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	read := `SELECT id, uuid, topic, partition_key, payload, metadata, attempts FROM ` + t +
		` ORDER BY id LIMIT ` + fmt.Sprint(floorBatch) + ` FOR UPDATE`
	del := `DELETE FROM ` + t + ` WHERE id BETWEEN ? AND ?`
	batch := func() (int, error) {
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return 0, err
		}
		defer func() { _ = tx.Rollback() }()
		rows, err := tx.QueryContext(ctx, read)
		if err != nil {
			return 0, err
		}
		out := make([]outbox.Row, 0, floorBatch)
		for rows.Next() {
			var r outbox.Row
			if err := rows.Scan(&r.ID, &r.UUID, &r.Topic, &r.PartitionKey, &r.Payload, &r.Metadata, &r.Attempts); err != nil {
				_ = rows.Close()
				return 0, err
			}
			out = append(out, r)
		}
		if err := rows.Close(); err != nil {
			return 0, err
		}
		if err := rows.Err(); err != nil {
			return 0, err
		}
		if len(out) == 0 {
			return 0, nil
		}
		res, err := tx.ExecContext(ctx, del, out[0].ID, out[len(out)-1].ID)
		if err != nil {
			return 0, err
		}
		if n, err := res.RowsAffected(); err != nil || n != int64(len(out)) {
			return 0, fmt.Errorf("deleted %d of the %d rows read (%v)", n, len(out), err)
		}
		return len(out), tx.Commit()
	}
	runtime.GC()

	cpu := sampleMySQLCPU(b, sqlDB)
	b.StartTimer()
	start := time.Now()
	total := 0
	for total < events {
		n, err := batch()
		if err != nil {
			b.Fatalf("floor: %v", err)
		}
		if n == 0 {
			break
		}
		total += n
	}
	elapsed := time.Since(start)
	b.StopTimer()
	r := drainResult{elapsed: elapsed, cpu: sampleMySQLCPU(b, sqlDB).sub(cpu)}
	if total != events {
		b.Fatalf("floor deleted %d of %d rows", total, events)
	}
	return r
}
