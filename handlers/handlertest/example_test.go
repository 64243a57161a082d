package handlertest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/glebarez/sqlite"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers/handlertest"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// A handler that touches no database runs without one. Its events go
// through the production encoder, so an event that cannot be marshaled
// fails the command as it would in production.
func Example_withoutDatabase() {
	t := newExampleT() // in a test: the test's *testing.T
	defer t.finish()

	confirm := func(ctx context.Context, cmd PlaceOrder) error {
		return outbox.Emit(ctx, OrderPlaced{OrderID: cmd.OrderID, Amount: cmd.Amount}, AuditLogged{What: "confirmed"})
	}

	k := handlertest.New(t, handlertest.Config{})
	rec := handlertest.Call(k, confirm, PlaceOrder{OrderID: "o-1", Amount: 3})

	handlertest.EmittedNames(t, rec, "OrderPlaced", "AuditLogged")
	for _, e := range handlertest.Emitted[OrderPlaced](t, rec) {
		fmt.Printf("placed %s for %d\n", e.OrderID, e.Amount)
	}
	for _, r := range rec.Records() {
		fmt.Printf("topic %s, partition key %q\n", r.Topic, r.PartitionKey)
	}

	broken := func(ctx context.Context, cmd PlaceOrder) error {
		return outbox.Emit(ctx, Unmarshalable{Callback: func() {}})
	}
	rec = handlertest.Call(k, broken, PlaceOrder{OrderID: "o-2"})
	fmt.Println(errors.Is(rec.Err(), outbox.ErrMarshal))
	// Output:
	// placed o-1 for 3
	// topic OrderPlaced, partition key "order-o-1"
	// topic audit, partition key ""
	// true
}

// With a database, each test runs in a transaction that is rolled back
// when it ends; commands run through the production transactional
// middleware in savepoints of it. SQLite here; PostgreSQL works the same.
func Example_database() {
	t := newExampleT() // in a test: the test's *testing.T
	defer t.finish()

	// Once per database, as in production: the outbox table and the
	// application's tables.
	dir, _ := os.MkdirTemp("", "handlertest")
	t.Cleanup(func() { os.RemoveAll(dir) })
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "app.db")), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		panic(err)
	}
	t.Cleanup(func() {
		if sqlDB, err := db.DB(); err == nil {
			sqlDB.Close()
		}
	})
	if err := gormstore.Migrate(context.Background(), db); err != nil {
		panic(err)
	}
	db.Exec("CREATE TABLE orders (id TEXT PRIMARY KEY, amount INTEGER NOT NULL)")

	// In each test:
	k := handlertest.New(t, handlertest.Config{DB: db})
	rec := handlertest.Call(k, placeOrder, PlaceOrder{OrderID: "o-1", Amount: 3})

	handlertest.EmittedNames(t, rec, "OrderPlaced", "AuditLogged")
	placed := handlertest.Emitted[OrderPlaced](t, rec)
	fmt.Printf("event: %+v\n", placed[0])

	var amount int
	k.Tx().Raw("SELECT amount FROM orders WHERE id = ?", "o-1").Scan(&amount)
	fmt.Println("order row amount:", amount)
	var rows int
	k.Tx().Raw("SELECT count(*) FROM txoutbox_outbox").Scan(&rows)
	fmt.Println("outbox rows:", rows)

	// A duplicate order fails: its savepoint is rolled back, nothing is
	// emitted.
	rec = handlertest.Call(k, placeOrder, PlaceOrder{OrderID: "o-1", Amount: 5})
	fmt.Println("duplicate fails:", rec.Err() != nil, "emitted:", rec.Len())
	// Output:
	// event: {OrderID:o-1 Amount:3}
	// order row amount: 3
	// outbox rows: 2
	// duplicate fails: true emitted: 0
}

// The application's own bus, with its production middleware, runs inside
// the kit: its Transactional middleware joins the test's transaction, and
// the events of nested commands are recorded too.
func ExampleKit_Dispatch() {
	t := newExampleT() // in a test: the test's *testing.T
	defer t.finish()

	dir, _ := os.MkdirTemp("", "handlertest")
	t.Cleanup(func() { os.RemoveAll(dir) })
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "app.db")), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		panic(err)
	}
	t.Cleanup(func() {
		if sqlDB, err := db.DB(); err == nil {
			sqlDB.Close()
		}
	})
	if err := gormstore.Migrate(context.Background(), db); err != nil {
		panic(err)
	}
	db.Exec("CREATE TABLE orders (id TEXT PRIMARY KEY, amount INTEGER NOT NULL)")

	// The application's bus, as main builds it.
	store, _ := gormstore.New(db, gormstore.Config{})
	tm, _ := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: store})
	b := bus.New(middleware.Recover(), tm.Middleware())
	_ = bus.Register(b, func(ctx context.Context, cmd PlaceOrder) error {
		if err := placeOrder(ctx, cmd); err != nil {
			return err
		}
		return b.Dispatch(ctx, ReserveStock{OrderID: cmd.OrderID})
	})
	_ = bus.Register(b, func(ctx context.Context, cmd ReserveStock) error {
		return outbox.Emit(ctx, StockReserved{OrderID: cmd.OrderID})
	})

	k := handlertest.New(t, handlertest.Config{DB: db})
	rec := k.Dispatch(b, PlaceOrder{OrderID: "o-1", Amount: 3})
	for _, r := range rec.Records() {
		fmt.Printf("%s emitted by %s\n", r.Message.Metadata.Get(outbox.MetadataName), r.Message.Metadata.Get(outbox.MetadataCommand))
	}
	// Output:
	// OrderPlaced emitted by PlaceOrder
	// AuditLogged emitted by PlaceOrder
	// StockReserved emitted by ReserveStock
}
