package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/glebarez/sqlite"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// The same message delivered three times changes the consumer's data once.
func ExampleInbox_Middleware() {
	dir, _ := os.MkdirTemp("", "inbox")
	defer os.RemoveAll(dir)
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "consumer.db")), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		panic(err)
	}
	if sqlDB, err := db.DB(); err == nil {
		defer sqlDB.Close()
	}
	ctx := context.Background()
	if err := inbox.Migrate(ctx, db); err != nil {
		panic(err)
	}
	db.Exec("CREATE TABLE charges (message_uuid TEXT NOT NULL)")

	in, err := inbox.New(db, inbox.Config{})
	if err != nil {
		panic(err)
	}
	charge := func(msg *message.Message) ([]*message.Message, error) {
		tx, err := outbox.Tx(msg.Context()) // the inbox's transaction
		if err != nil {
			return nil, err
		}
		fmt.Println("charging for", msg.UUID)
		return nil, tx.Exec("INSERT INTO charges (message_uuid) VALUES (?)", msg.UUID).Error
	}
	// With a router: handler.AddMiddleware(in.Middleware("billing.charge")).
	h := in.Middleware("billing.charge")(charge)

	for range 3 {
		if _, err := h(message.NewMessage("0190f5b2-7c1e-7000-8000-000000000001", []byte(`{}`))); err != nil {
			panic(err)
		}
	}
	var charges int
	db.Raw("SELECT count(*) FROM charges").Scan(&charges)
	fmt.Println("charges:", charges)
	// Output:
	// charging for 0190f5b2-7c1e-7000-8000-000000000001
	// charges: 1
}

// A Consumer processes each message once, in batches, and parks the one
// it cannot process in the failed table instead of stopping on it.
func ExampleInbox_NewConsumer() {
	dir, _ := os.MkdirTemp("", "inbox")
	defer os.RemoveAll(dir)
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "consumer.db")), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		panic(err)
	}
	if sqlDB, err := db.DB(); err == nil {
		defer sqlDB.Close()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in, err := inbox.New(db, inbox.Config{})
	if err != nil {
		panic(err)
	}
	if err := in.Migrate(ctx); err != nil {
		panic(err)
	}
	db.Exec("CREATE TABLE charges (message_uuid TEXT NOT NULL)")

	broker := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	c, err := in.NewConsumer(inbox.ConsumerConfig{
		Name:       "billing.charge",
		Topics:     []string{"orders"},
		Subscriber: broker,
		Handler: func(msg *message.Message) error {
			if string(msg.Payload) == "garbage" {
				return inbox.Permanent(errors.New("cannot decode"))
			}
			tx, err := outbox.Tx(msg.Context()) // the batch's transaction
			if err != nil {
				return err
			}
			return tx.Exec("INSERT INTO charges (message_uuid) VALUES (?)", msg.UUID).Error
		},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		panic(err)
	}
	go func() { _ = c.Run(ctx) }()
	<-c.Running()

	first := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
	_ = broker.Publish("orders", first, first, // the second is a duplicate
		message.NewMessage(watermill.NewUUID(), []byte("garbage")),
		message.NewMessage(watermill.NewUUID(), []byte(`{}`)))
	for c.Stats().Processed+c.Stats().Duplicates+c.Stats().Parked < 4 {
		time.Sleep(time.Millisecond)
	}
	var charges int
	db.Raw("SELECT count(*) FROM charges").Scan(&charges)
	failed, _ := in.ListFailed(ctx, "billing.charge", 0, 10)
	fmt.Println("charges:", charges)
	fmt.Println("failed:", len(failed), failed[0].Error)
	// Output:
	// charges: 2
	// failed: 1 inbox: permanent failure: cannot decode
}
