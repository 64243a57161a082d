// Command minimal is the smallest complete txoutbox program: a command
// handler writes an order and emits an event in one transaction, the
// forwarder publishes the event, and a subscriber prints it. It runs on
// SQLite and Watermill's in-process GoChannel, so it needs no services:
//
//	go run ./examples/minimal
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/glebarez/sqlite"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// PlaceOrder is the command.
type PlaceOrder struct{ OrderID, Customer string }

// OrderPlaced is the event. Its partition key orders the events of one
// order; its topic is its name, "OrderPlaced".
type OrderPlaced struct{ OrderID, Customer string }

// PartitionKey orders the events of one order.
func (e OrderPlaced) PartitionKey() string { return e.OrderID }

// Order is the business row the handler writes.
type Order struct {
	ID       string `gorm:"primaryKey"`
	Customer string
}

// placeOrder writes the order and emits OrderPlaced in the command's
// transaction: both commit, or neither does.
func placeOrder(ctx context.Context, cmd PlaceOrder) error {
	tx, err := outbox.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Create(&Order{ID: cmd.OrderID, Customer: cmd.Customer}).Error; err != nil {
		return err
	}
	return outbox.Emit(ctx, OrderPlaced{OrderID: cmd.OrderID, Customer: cmd.Customer})
}

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	dir, err := os.MkdirTemp("", "txoutbox-minimal")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	dsn := "file:" + filepath.Join(dir, "app.db") + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_txlock=immediate"
	db, err := gorm.Open(sqlite.Open(dsn), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return err
	}
	if err := db.AutoMigrate(&Order{}); err != nil {
		return err
	}
	if err := gormstore.Migrate(ctx, db); err != nil { // the outbox table, txoutbox_outbox
		return err
	}

	// The broker: any Watermill publisher. GoChannel must block until the
	// subscriber acks, or it loses the order of messages.
	pubsub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	defer pubsub.Close()
	messages, err := pubsub.Subscribe(ctx, "OrderPlaced") // before the forwarder publishes
	if err != nil {
		return err
	}

	store, err := gormstore.New(db, gormstore.Config{})
	if err != nil {
		return err
	}
	fwd, err := outbox.NewForwarder(store, pubsub, outbox.ForwarderConfig{})
	if err != nil {
		return err
	}
	tm, err := middleware.NewTransactional(middleware.TransactionalConfig{
		DB: db, Store: store,
		Wake: fwd, // publish at once after each commit, not at the next poll
	})
	if err != nil {
		return err
	}
	b := bus.New(middleware.Recover(), tm.Middleware())
	if err := bus.Register(b, placeOrder); err != nil {
		return err
	}
	go func() { _ = fwd.Run(ctx) }()

	for i, customer := range []string{"ada", "grace", "edsger"} {
		if err := b.Dispatch(ctx, PlaceOrder{OrderID: fmt.Sprintf("o-%d", i+1), Customer: customer}); err != nil {
			return err
		}
	}
	for range 3 {
		select {
		case msg := <-messages:
			fmt.Fprintf(out, "%s %s\n", msg.Metadata.Get(outbox.MetadataPartitionKey), msg.Payload)
			msg.Ack()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
