package middleware_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/glebarez/sqlite"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// The transactional middleware on a bus: each command runs in a
// transaction of its own, and the events it emits are saved in it just
// before commit. A command that fails leaves neither its rows nor its
// events behind.
func ExampleNewTransactional() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "middleware-example")
	defer os.RemoveAll(dir)
	db, err := gorm.Open(sqlite.Open(testdb.SQLiteDSN(filepath.Join(dir, "app.db"))), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		fmt.Println(err)
		return
	}
	if sqlDB, err := db.DB(); err == nil {
		defer sqlDB.Close()
	}
	_ = db.Exec(`CREATE TABLE tickets (seat TEXT PRIMARY KEY)`)
	store, err := gormstore.New(db, gormstore.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := store.Migrate(ctx); err != nil {
		fmt.Println(err)
		return
	}

	tm, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: store})
	if err != nil {
		fmt.Println(err)
		return
	}
	b := bus.New(middleware.Recover(), tm.Middleware())
	if err := bus.Register(b, bookTicket); err != nil { // writes a ticket, emits TicketBooked
		fmt.Println(err)
		return
	}

	fmt.Println("seat 12:", b.Dispatch(ctx, BookTicket{Seat: "12"}))
	fmt.Println("seat 13:", b.Dispatch(ctx, BookTicket{Seat: "13"}))
	var tickets, events int64
	db.Table("tickets").Count(&tickets)
	db.Table(store.Table()).Count(&events)
	fmt.Println("tickets:", tickets, "events:", events)
	// Output:
	// seat 12: <nil>
	// seat 13: no seat 13
	// tickets: 1 events: 1
}
