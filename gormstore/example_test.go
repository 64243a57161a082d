package gormstore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/glebarez/sqlite"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// OrderPlaced is the event of the examples.
type OrderPlaced struct{ OrderID string }

// PartitionKey orders the events of one order.
func (e OrderPlaced) PartitionKey() string { return e.OrderID }

// The store picks its database from the GORM dialector (here SQLite),
// creates its table with Migrate, and saves records in the transaction it
// is given: they exist only if that transaction commits.
func ExampleNew() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "gormstore-example")
	defer os.RemoveAll(dir)
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "app.db")), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		fmt.Println(err)
		return
	}

	if sqlDB, err := db.DB(); err == nil {
		defer sqlDB.Close()
	}
	store, err := gormstore.New(db, gormstore.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := store.Migrate(ctx); err != nil {
		fmt.Println(err)
		return
	}
	recs, err := outbox.NewEncoder(outbox.EncoderConfig{}).EncodeAll([]outbox.Entry{
		{Event: OrderPlaced{OrderID: "o-1"}}, {Event: OrderPlaced{OrderID: "o-2"}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	err = db.Transaction(func(tx *gorm.DB) error { return store.Save(ctx, tx, recs) })
	fmt.Println("committed:", err)
	_ = db.Transaction(func(tx *gorm.DB) error {
		_ = store.Save(ctx, tx, recs[:1])
		return fmt.Errorf("the command failed") // rolls its records back
	})

	stats, err := store.Stats(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(store.Table(), "pending:", stats.Pending, "of topic OrderPlaced:", stats.Topics["OrderPlaced"].Pending)
	// Output:
	// committed: <nil>
	// txoutbox_outbox pending: 2 of topic OrderPlaced: 2
}
