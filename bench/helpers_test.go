package bench_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// The benchmarked events: 196 bytes of JSON on eventKeys partition
// keys, all on eventTopic.
const (
	eventTopic  = "orders"
	eventKeys   = 50
	eventName   = "OrderPlaced"
	commandName = "PlaceOrder"
	// stockForwarderTopic is the watermill-sql topic the stock path writes
	// envelopes to (components/forwarder's default); its table is
	// "watermill_forwarder_topic".
	stockForwarderTopic = "forwarder_topic"
	stockTable          = `"watermill_` + stockForwarderTopic + `"`
)

// OrderPlaced is the benchmarked domain event.
type OrderPlaced struct {
	OrderID     string      `json:"order_id"`
	CustomerID  string      `json:"customer_id"`
	AmountCents int         `json:"amount_cents"`
	Currency    string      `json:"currency"`
	Lines       []OrderLine `json:"lines"`
	Note        string      `json:"note"`
}

// OrderLine is a line of an order.
type OrderLine struct {
	SKU        string `json:"sku"`
	Qty        int    `json:"qty"`
	PriceCents int    `json:"price_cents"`
}

// Topic routes every benchmarked event to one topic.
func (OrderPlaced) Topic() string { return eventTopic }

// PartitionKey orders a customer's events.
func (e OrderPlaced) PartitionKey() string { return e.CustomerID }

// PlaceOrder is the benchmarked command; its handler emits newOrder(N).
type PlaceOrder struct{ N int }

// newOrder returns the i-th event. nativePayloadSQL builds the same JSON in
// SQL (TestFillMatchesEncoder checks it).
func newOrder(i int) OrderPlaced {
	return OrderPlaced{
		OrderID:     fmt.Sprintf("order-%09d", i),
		CustomerID:  fmt.Sprintf("customer-%02d", i%eventKeys),
		AmountCents: 12345,
		Currency:    "EUR",
		Lines:       []OrderLine{{SKU: fmt.Sprintf("SKU-%06d", i%1000), Qty: 2, PriceCents: 4999}},
		Note:        "leave it at the door, ring twice",
	}
}

// nativeStore opens a fresh PostgreSQL schema and returns it with a store of cfg
// whose table is created.
func nativeStore(tb testing.TB, cfg gormstore.Config) (*gorm.DB, *gormstore.Store) {
	tb.Helper()
	db, _ := testdb.OpenPostgres(tb)
	s, err := gormstore.New(db, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return db, s
}

// nativePayloadSQL is newOrder(i) as JSON, for a row numbered i.
const nativePayloadSQL = `format('{"order_id":"order-%s","customer_id":"customer-%s","amount_cents":12345,"currency":"EUR",` +
	`"lines":[{"sku":"SKU-%s","qty":2,"price_cents":4999}],` +
	`"note":"leave it at the door, ring twice"}', lpad(i::text, 9, '0'), lpad((i % 50)::text, 2, '0'), lpad((i % 1000)::text, 6, '0'))`

// fillNative inserts rows 1..n into the native outbox table in one
// statement, in the form gormstore.Store.Save writes them: the payload of
// newOrder(i) and the metadata keys the outbox.Encoder sets.
func fillNative(tb testing.TB, db *gorm.DB, table string, n int) {
	tb.Helper()
	if isMySQL(db) {
		fillNativeMySQL(tb, db, table, n)
		return
	}
	q := `INSERT INTO ` + table + ` (uuid, topic, partition_key, payload, metadata)
SELECT u, '` + eventTopic + `', k, convert_to(` + nativePayloadSQL + `, 'UTF8'),
	jsonb_build_object('name', '` + eventName + `', 'correlation_id', c, 'causation_id', c,
		'command', '` + commandName + `', 'partition_key', k,
		'created_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
FROM (SELECT i, gen_random_uuid()::text AS u, gen_random_uuid()::text AS c,
	'customer-' || lpad((i % 50)::text, 2, '0') AS k
	FROM generate_series(1, ?) AS i) AS s
ORDER BY i`
	if err := db.Exec(q, n).Error; err != nil {
		tb.Fatalf("fill %s: %v", table, err)
	}
	settle(tb, db, table)
}

// stockFillers is the number of goroutines filling the stock table.
const stockFillers = 12

// fillStock writes events 1..n the stock way, as the transactional
// middleware would: each event encoded by outbox.Encoder and published in a
// transaction of its own through a watermill-sql/v3 Publisher wrapped by
// components/forwarder's Publisher, from stockFillers goroutines at once.
// One event per transaction matters: the stock subscriber drains a table
// filled in large transactions about 30% more slowly. The fill uses its
// own pool with synchronous_commit off, to be quick.
func fillStock(tb testing.TB, schema string, wlog watermill.LoggerAdapter, n int) {
	tb.Helper()
	db, _, _ := openPool(tb, schema, map[string]string{"synchronous_commit": "off"})
	defer db.Close()
	pub, err := wsql.NewPublisher(db, wsql.PublisherConfig{
		SchemaAdapter:        wsql.DefaultPostgreSQLSchema{},
		AutoInitializeSchema: true,
	}, wlog)
	if err != nil {
		tb.Fatal(err)
	}
	fpub := forwarder.NewPublisher(pub, forwarder.PublisherConfig{ForwarderTopic: stockForwarderTopic})
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	publish := func(i int) error {
		id := outbox.NewUUID()
		rec, err := enc.Encode(outbox.Entry{
			Event:   newOrder(i),
			Command: outbox.Command{ID: id, Name: commandName, CorrelationID: id},
		})
		if err != nil {
			return err
		}
		return fpub.Publish(rec.Topic, rec.Message)
	}
	// The first publish creates the table.
	if err := publish(1); err != nil {
		tb.Fatalf("fill stock table: %v", err)
	}
	jobs := make(chan int, stockFillers)
	errs := make(chan error, stockFillers)
	var wg sync.WaitGroup
	for range stockFillers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := publish(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := 2; i <= n; i++ {
		select {
		case jobs <- i:
		case err := <-errs:
			tb.Fatalf("fill stock table: %v", err)
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		tb.Fatalf("fill stock table: %v", err)
	default:
	}
}

// settle vacuums and analyzes a freshly filled table, so every backend
// starts from the same settled table (hint bits set, statistics known), as
// a backlog that built up over time would be. On MySQL/MariaDB it runs
// ANALYZE TABLE (settleMySQL).
func settle(tb testing.TB, db *gorm.DB, table string) {
	tb.Helper()
	if isMySQL(db) {
		settleMySQL(tb, db, table)
		return
	}
	if err := db.Exec("VACUUM (ANALYZE) " + table).Error; err != nil {
		tb.Fatalf("vacuum %s: %v", table, err)
	}
}

// sink is a GoChannel publisher with one subscriber that acks everything
// and counts what it received. The GoChannel blocks each Publish until the
// subscriber acks, which keeps per-key order.
type sink struct {
	pubSub   *gochannel.GoChannel
	received atomic.Int64
	want     int64
	done     chan struct{}
}

// newSink subscribes to eventTopic; done is closed when want messages have
// arrived. onMsg, when not nil, sees each message before its ack.
//
// The GoChannel stands in for a broker, so it logs nothing: its per-message
// Trace and Debug calls through an slog adapter cost about 10% of the
// relay's CPU even when the level is disabled, which is the sink's cost,
// not the relay's. The relays themselves get a real logger.
func newSink(tb testing.TB, want int64, onMsg func(*message.Message)) *sink {
	tb.Helper()
	gc := gochannel.NewGoChannel(gochannel.Config{
		BlockPublishUntilSubscriberAck: true,
		OutputChannelBuffer:            1024,
	}, watermill.NopLogger{})
	ch, err := gc.Subscribe(context.Background(), eventTopic)
	if err != nil {
		tb.Fatal(err)
	}
	s := &sink{pubSub: gc, want: want, done: make(chan struct{})}
	go func() {
		for msg := range ch {
			if onMsg != nil {
				onMsg(msg)
			}
			msg.Ack()
			if s.received.Add(1) == s.want {
				close(s.done)
			}
		}
	}()
	tb.Cleanup(func() { _ = gc.Close() })
	return s
}

// wait waits until the sink has received want messages, failing tb after
// timeout.
func (s *sink) wait(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	select {
	case <-s.done:
	case <-time.After(timeout):
		tb.Fatalf("received %d of %d messages in %v", s.received.Load(), s.want, timeout)
	}
}

// logs counts and keeps the first warnings and errors that the relays
// log, and drops everything below warning level. Relays get a real logger
// (Watermill's forwarder misbehaves with a nil one).
type logs struct {
	mu    sync.Mutex
	n     int
	first []string
}

// newLogs returns loggers for the forwarders and Watermill; tb's cleanup
// reports what was logged at warning level or above.
func newLogs(tb testing.TB) (*slog.Logger, watermill.LoggerAdapter) {
	l := &logs{}
	tb.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.n > 0 {
			tb.Logf("relay logged %d warnings or errors; first: %s", l.n, strings.Join(l.first, " | "))
		}
	})
	sl := slog.New(logHandler{l})
	return sl, watermill.NewSlogLogger(sl)
}

type logHandler struct{ l *logs }

func (h logHandler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= slog.LevelWarn
}

func (h logHandler) Handle(_ context.Context, r slog.Record) error {
	h.l.mu.Lock()
	defer h.l.mu.Unlock()
	h.l.n++
	if len(h.l.first) < 5 {
		var b strings.Builder
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			return true
		})
		h.l.first = append(h.l.first, b.String())
	}
	return nil
}

func (h logHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h logHandler) WithGroup(string) slog.Handler      { return h }

// queryCounter is a pgx tracer that counts what a pool sends to
// PostgreSQL: statements (each statement of a pipelined batch counts),
// round trips (a batch is one), and transactions begun.
type queryCounter struct {
	statements, roundTrips, transactions atomic.Int64
}

// counts is a snapshot of a queryCounter.
type counts struct{ statements, roundTrips, transactions int64 }

func (c *queryCounter) snapshot() counts {
	return counts{c.statements.Load(), c.roundTrips.Load(), c.transactions.Load()}
}

func (a counts) sub(b counts) counts {
	return counts{a.statements - b.statements, a.roundTrips - b.roundTrips, a.transactions - b.transactions}
}

func (a counts) add(b counts) counts {
	return counts{a.statements + b.statements, a.roundTrips + b.roundTrips, a.transactions + b.transactions}
}

func (c *queryCounter) statement(sql string) {
	c.statements.Add(1)
	s := strings.ToLower(strings.TrimSpace(sql))
	if strings.HasPrefix(s, "begin") || strings.HasPrefix(s, "start transaction") {
		c.transactions.Add(1)
	}
}

// TraceQueryStart counts a statement sent on its own.
func (c *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	c.roundTrips.Add(1)
	c.statement(d.SQL)
	return ctx
}

// TraceQueryEnd does nothing.
func (c *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TraceBatchStart counts a pipelined batch: one round trip, every
// statement in it.
func (c *queryCounter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	c.roundTrips.Add(1)
	if d.Batch != nil {
		for _, q := range d.Batch.QueuedQueries {
			c.statement(q.SQL)
		}
	}
	return ctx
}

// TraceBatchQuery does nothing: TraceBatchStart counted the batch.
func (c *queryCounter) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

// TraceBatchEnd does nothing.
func (c *queryCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// openPool opens a pool on schema whose statements are counted, as
// *sql.DB and as *gorm.DB (gorm.io/driver/postgres on the same pool), with
// extra session settings params. It is closed when tb ends, before the
// schema is dropped.
func openPool(tb testing.TB, schema string, params map[string]string) (*sql.DB, *gorm.DB, *queryCounter) {
	tb.Helper()
	cfg, err := pgx.ParseConfig(testdb.SchemaURL(tb, schema))
	if err != nil {
		tb.Fatal(err)
	}
	maps.Copy(cfg.RuntimeParams, params)
	qc := &queryCounter{}
	cfg.Tracer = qc
	sqlDB := stdlib.OpenDB(*cfg)
	sqlDB.SetMaxOpenConns(16)
	sqlDB.SetMaxIdleConns(16)
	tb.Cleanup(func() { _ = sqlDB.Close() })
	gdb, err := gorm.Open(postgres.New(postgres.Config{Conn: sqlDB}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		tb.Fatal(err)
	}
	return sqlDB, gdb, qc
}

// newStockForwarder returns Watermill's stock forwarder reading the
// watermill-sql/v3 table on db and publishing to out, configured as the
// issue specifies: DefaultPostgreSQLSchema with batches of 100, the
// default offsets adapter, a 10 ms poll, schema initialised on subscribe.
func newStockForwarder(tb testing.TB, db *sql.DB, out message.Publisher, wlog watermill.LoggerAdapter) *forwarder.Forwarder {
	tb.Helper()
	sub, err := wsql.NewSubscriber(db, wsql.SubscriberConfig{
		SchemaAdapter:    wsql.DefaultPostgreSQLSchema{SubscribeBatchSize: 100},
		OffsetsAdapter:   wsql.DefaultPostgreSQLOffsetsAdapter{},
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

// watermillSQLStore is the stock write path behind the transactional
// middleware, as a user builds it today: for each command a watermill-sql/v3
// Publisher on the command's *sql.Tx, wrapped by components/forwarder's
// Publisher. The watermill-sql table must exist beforehand (the publisher
// cannot create it inside a transaction).
type watermillSQLStore struct{ wlog watermill.LoggerAdapter }

var _ outbox.Store = watermillSQLStore{}

// Save publishes records through a stock publisher on tx's *sql.Tx.
func (s watermillSQLStore) Save(_ context.Context, tx *gorm.DB, records []outbox.Record) error {
	sqlTx, err := unwrapTx(tx)
	if err != nil {
		return err
	}
	pub, err := wsql.NewPublisher(sqlTx, wsql.PublisherConfig{SchemaAdapter: wsql.DefaultPostgreSQLSchema{}}, s.wlog)
	if err != nil {
		return err
	}
	fpub := forwarder.NewPublisher(pub, forwarder.PublisherConfig{ForwarderTopic: stockForwarderTopic})
	for _, r := range records {
		if err := fpub.Publish(r.Topic, r.Message); err != nil {
			return err
		}
	}
	return nil
}

// unwrapTx returns the *sql.Tx under a GORM transaction.
func unwrapTx(tx *gorm.DB) (*sql.Tx, error) {
	switch p := tx.Statement.ConnPool.(type) {
	case *sql.Tx:
		return p, nil
	case *gorm.PreparedStmtTX:
		if t, ok := p.Tx.(*sql.Tx); ok {
			return t, nil
		}
	}
	return nil, errors.New("bench: not a database/sql transaction")
}
