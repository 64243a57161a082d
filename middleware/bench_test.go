package middleware_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"github.com/txoutbox/txoutbox/walrelay"
	"gorm.io/gorm"
)

// benchPlaceOrder is the benchmarked command: insert one order row and emit
// Events events.
type benchPlaceOrder struct {
	ID     string
	Amount int
	Events int
	// Extra inserts as many more business rows (diagnostic variant).
	Extra int
}

// publisherKey carries the stock variant's per-transaction publisher.
type publisherKey struct{}

// stockForwarderTopic is the topic the stock forwarder publisher writes to.
const stockForwarderTopic = "forwarder_topic"

// mysqlOrdersDDL is ordersDDL on MySQL/MariaDB, where a TEXT column
// cannot be a primary key.
const mysqlOrdersDDL = `CREATE TABLE orders (
	id     VARCHAR(64) PRIMARY KEY,
	amount INTEGER NOT NULL
)`

// BenchmarkDispatch measures the write path on PostgreSQL: one command that
// inserts one business row, with and without the outbox. Each sub-benchmark
// runs 8 concurrent commands (b.SetParallelism(4) on 2 cores): a single
// goroutine is bound by the commit's fsync and too noisy to compare.
//
//	outbox=off           the same handler in a plain db.Transaction, no events
//	outbox=1event        Transactional, one event emitted
//	outbox=10events      Transactional, ten events emitted
//	stock=watermill-sql  plain db.Transaction; one event published the stock
//	                     way: a watermill-sql/v3 Publisher on the *sql.Tx,
//	                     wrapped by components/forwarder's Publisher
//
// and diagnostics: outbox=1event,nonotify and outbox=10events,nonotify
// (gormstore.Config{NoNotify: true}), outbox=off,2rows (the baseline with a
// second business INSERT). outbox=1event,wal and outbox=10events,wal write
// the events as one logical decoding message per command (gormstore's WAL
// mode, on a replication slot of the benchmark's own that nothing reads
// meanwhile).
//
// rtt=0.5ms/ holds the four main sub-benchmarks on PostgreSQL behind 0.5 ms
// more round-trip time, as a database on another host has: a fresh schema
// reached through a delayProxy of 0.25 ms each way. There each command waits
// mostly for its round trips, so the ratios count the round trips the
// outbox adds. go-cpu-ns/op includes the proxy's CPU, about 0.2 ms per
// round trip (BenchmarkDelayProxy): at 8 commands in flight on 2 cores the
// group would be bound by that CPU as much as by the delay (outbox=off took
// 2.2 ms a command at 2 in flight, 6–7 ms at 8), so the group runs 2
// commands in flight (b.SetParallelism(1)), where ns/op counts the round
// trips.
//
// db=mysql/ holds the four main sub-benchmarks on MySQL/MariaDB (a fresh
// database of testdb.OpenMySQL), the stock one with DefaultMySQLSchema.
func BenchmarkDispatch(b *testing.B) {
	db, _ := testdb.OpenPostgres(b)
	env := newDispatchEnv(b, db, wsql.DefaultPostgreSQLSchema{}, ordersDDL)
	// The same without the store's NOTIFY, which serialises the commits of
	// notifying transactions in PostgreSQL.
	quietStore, err := gormstore.New(db, gormstore.Config{NoNotify: true})
	if err != nil {
		b.Fatal(err)
	}
	tmQuiet, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: quietStore})
	if err != nil {
		b.Fatal(err)
	}
	variants := append(env.main(),
		// Diagnostics: the outbox without the store's NOTIFY, and the
		// baseline with a second business INSERT (the round trip and row
		// the outbox adds, without the outbox).
		dispatchVariant{"outbox=1event,nonotify", tmQuiet.Middleware(), outbox.Emit, 1, 0},
		dispatchVariant{"outbox=10events,nonotify", tmQuiet.Middleware(), outbox.Emit, 10, 0},
		dispatchVariant{"outbox=off,2rows", env.plainTx, nil, 0, 1},
	)
	tmWAL := walTransactional(b, db)
	variants = append(variants,
		dispatchVariant{"outbox=1event,wal", tmWAL.Middleware(), outbox.Emit, 1, 0},
		dispatchVariant{"outbox=10events,wal", tmWAL.Middleware(), outbox.Emit, 10, 0},
	)
	var seq atomic.Int64
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) { env.run(b, v, &seq) })
	}
	b.Run("rtt=0.5ms", func(b *testing.B) {
		_, schema := testdb.OpenPostgres(b)
		db := testdb.OpenURL(b, delayedURL(b, testdb.SchemaURL(b, schema), rttDelay))
		env := newDispatchEnv(b, db, wsql.DefaultPostgreSQLSchema{}, ordersDDL)
		env.parallelism = 1
		quiet, err := gormstore.New(db, gormstore.Config{NoNotify: true})
		if err != nil {
			b.Fatal(err)
		}
		tmQuiet, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: quiet})
		if err != nil {
			b.Fatal(err)
		}
		variants := append(env.main(),
			dispatchVariant{"outbox=1event,nonotify", tmQuiet.Middleware(), outbox.Emit, 1, 0},
			dispatchVariant{"outbox=1event,wal", walTransactional(b, db).Middleware(), outbox.Emit, 1, 0},
		)
		for _, v := range variants {
			b.Run(v.name, func(b *testing.B) { env.run(b, v, &seq) })
		}
	})
	b.Run("db=mysql", func(b *testing.B) {
		db, _ := testdb.OpenMySQL(b)
		env := newDispatchEnv(b, db, wsql.DefaultMySQLSchema{}, mysqlOrdersDDL)
		for _, v := range env.main() {
			b.Run(v.name, func(b *testing.B) { env.run(b, v, &seq) })
		}
	})
}

// dispatchVariant is a sub-benchmark of BenchmarkDispatch: the middleware
// around the handler, how it emits, and what each command does.
type dispatchVariant struct {
	name   string
	mw     bus.Middleware
	emit   func(ctx context.Context, events ...any) error
	events int
	extra  int
}

// dispatchEnv is BenchmarkDispatch's database, with the orders table, the
// native outbox table and the stock watermill-sql table created, and the
// middlewares of its variants.
type dispatchEnv struct {
	db *gorm.DB
	// tables are emptied before each sub-benchmark.
	tables []string
	// tm is Transactional on gormstore at defaults.
	tm *middleware.Transactional
	// plainTx is the baseline: a GORM transaction per command, reachable
	// with outbox.Tx like under Transactional, and nothing else.
	plainTx bus.Middleware
	// stockTx is plainTx plus the stock watermill-sql outbox publisher,
	// created on the transaction for each command; stockEmit publishes
	// through it.
	stockTx   bus.Middleware
	stockEmit func(ctx context.Context, events ...any) error
	// parallelism is b.SetParallelism's: commands in flight per core.
	parallelism int
}

// stockSchema is a watermill-sql/v3 schema that names its table, as
// DefaultPostgreSQLSchema and DefaultMySQLSchema do.
type stockSchema interface {
	wsql.SchemaAdapter
	MessagesTable(topic string) string
}

// newDispatchEnv creates the tables on db (orders with ordersDDL, the stock
// table of stockSchema) and the middlewares.
func newDispatchEnv(b *testing.B, db *gorm.DB, stockSchema stockSchema, ordersDDL string) *dispatchEnv {
	b.Helper()
	ctx := context.Background()
	if err := gormstore.Migrate(ctx, db); err != nil {
		b.Fatal(err)
	}
	if err := db.Exec(ordersDDL).Error; err != nil {
		b.Fatal(err)
	}
	for _, q := range stockSchema.SchemaInitializingQueries(stockForwarderTopic) {
		if err := db.Exec(q.Query, q.Args...).Error; err != nil {
			b.Fatal(err)
		}
	}
	store, err := gormstore.New(db, gormstore.Config{})
	if err != nil {
		b.Fatal(err)
	}
	tm, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: store})
	if err != nil {
		b.Fatal(err)
	}
	e := &dispatchEnv{
		db:          db,
		tables:      []string{"orders", gormstore.DefaultTable, stockSchema.MessagesTable(stockForwarderTopic)},
		tm:          tm,
		parallelism: 4,
	}
	e.plainTx = func(next bus.Handler) bus.Handler {
		return func(ctx context.Context, cmd any) error {
			return db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
				return next(outbox.WithTx(ctx, tx), cmd)
			})
		}
	}
	stockLogger := watermill.NopLogger{}
	e.stockTx = func(next bus.Handler) bus.Handler {
		return func(ctx context.Context, cmd any) error {
			return db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
				sqlTx, ok := tx.Statement.ConnPool.(*sql.Tx)
				if !ok {
					return fmt.Errorf("ConnPool is %T, not *sql.Tx", tx.Statement.ConnPool)
				}
				pub, err := wsql.NewPublisher(sqlTx, wsql.PublisherConfig{SchemaAdapter: stockSchema}, stockLogger)
				if err != nil {
					return err
				}
				fwd := forwarder.NewPublisher(pub, forwarder.PublisherConfig{ForwarderTopic: stockForwarderTopic})
				ctx = context.WithValue(outbox.WithTx(ctx, tx), publisherKey{}, fwd)
				return next(ctx, cmd)
			})
		}
	}
	stockMarshaler := cqrs.JSONMarshaler{NewUUID: outbox.NewUUID, GenerateName: cqrs.StructName}
	e.stockEmit = func(ctx context.Context, events ...any) error {
		pub, _ := ctx.Value(publisherKey{}).(message.Publisher)
		if pub == nil {
			return errors.New("no stock publisher in context")
		}
		for _, ev := range events {
			msg, err := stockMarshaler.Marshal(ev)
			if err != nil {
				return err
			}
			if err := pub.Publish(stockMarshaler.Name(ev), msg); err != nil {
				return err
			}
		}
		return nil
	}
	return e
}

// main returns the main variants, those that BenchmarkDispatch runs on
// every database.
func (e *dispatchEnv) main() []dispatchVariant {
	return []dispatchVariant{
		{"outbox=off", e.plainTx, nil, 0, 0},
		{"outbox=1event", e.tm.Middleware(), outbox.Emit, 1, 0},
		{"outbox=10events", e.tm.Middleware(), outbox.Emit, 10, 0},
		{"stock=watermill-sql", e.stockTx, e.stockEmit, 1, 0},
	}
}

// run runs variant v from empty tables.
func (e *dispatchEnv) run(b *testing.B, v dispatchVariant, seq *atomic.Int64) {
	for _, t := range e.tables {
		if err := e.db.Exec("TRUNCATE TABLE " + t).Error; err != nil {
			b.Fatal(err)
		}
	}
	cb := bus.New(v.mw)
	if err := bus.Register(cb, benchHandler(v.emit)); err != nil {
		b.Fatal(err)
	}
	dispatchParallel(b, cb, seq, e.parallelism, benchPlaceOrder{Amount: 1, Events: v.events, Extra: v.extra})
	if v.events > 0 {
		b.ReportMetric(float64(b.N*v.events)/b.Elapsed().Seconds(), "events/s")
	}
}

// benchHandler is the handler of every variant; only emit differs.
func benchHandler(emit func(ctx context.Context, events ...any) error) bus.HandlerFunc[benchPlaceOrder] {
	return func(ctx context.Context, cmd benchPlaceOrder) error {
		tx, err := outbox.Tx(ctx)
		if err != nil {
			return err
		}
		if err := tx.Exec("INSERT INTO orders (id, amount) VALUES (?, ?)", cmd.ID, cmd.Amount).Error; err != nil {
			return err
		}
		for i := range cmd.Extra {
			if err := tx.Exec("INSERT INTO orders (id, amount) VALUES (?, ?)", cmd.ID+"-"+strconv.Itoa(i), cmd.Amount).Error; err != nil {
				return err
			}
		}
		for i := range cmd.Events {
			if err := emit(ctx, OrderPlaced{OrderID: cmd.ID, Amount: cmd.Amount + i}); err != nil {
				return err
			}
		}
		return nil
	}
}

// dispatchParallel dispatches b.N copies of cmd, each with the next ID of
// seq, 8 at a time (b.SetParallelism(4) on 2 cores), and reports
// commands/s and the Go CPU per command: of this process (bus,
// middleware, encoding, pgx, GC); the rest of the time is PostgreSQL and
// waiting.
func dispatchParallel(b *testing.B, cb *bus.Bus, seq *atomic.Int64, parallelism int, cmd benchPlaceOrder) {
	ctx := context.Background()
	b.SetParallelism(parallelism)
	b.ReportAllocs()
	cpu0 := processCPU(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c := cmd
			c.ID = "o-" + strconv.FormatInt(seq.Add(1), 10)
			if err := cb.Dispatch(ctx, c); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commands/s")
	b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/float64(b.N), "go-cpu-ns/op")
}

// walTransactional returns Transactional on a store of db in WAL mode, on
// a replication slot created for the benchmark and dropped when it ends.
func walTransactional(b *testing.B, db *gorm.DB) *middleware.Transactional {
	b.Helper()
	name := "txo_dispatch_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	cfg := walrelay.Config{Slot: name, Publication: name}
	ctx := context.Background()
	if err := walrelay.Setup(ctx, testdb.URL(), cfg); err != nil {
		b.Fatalf("walrelay.Setup (the WAL mode needs wal_level=logical: run scripts/ensure-services.sh postgres): %v", err)
	}
	b.Cleanup(func() {
		// A slot left behind makes the server keep WAL for it.
		if err := db.Exec("SELECT pg_drop_replication_slot(?)", name).Error; err != nil {
			b.Errorf("drop replication slot %s: %v", name, err)
		}
		if err := db.Exec("DROP PUBLICATION IF EXISTS " + name).Error; err != nil {
			b.Errorf("drop publication %s: %v", name, err)
		}
	})
	store, err := gormstore.New(db, gormstore.Config{WAL: &gormstore.WALConfig{Slot: name}})
	if err != nil {
		b.Fatal(err)
	}
	tm, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: store})
	if err != nil {
		b.Fatal(err)
	}
	return tm
}
