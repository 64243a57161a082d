// Command inbox consumes events exactly once with the inbox: an
// inbox.Consumer records each message's UUID in the same transaction as
// the handler's writes, so a redelivered message is acked without running
// the handler again. It runs on SQLite and Watermill's in-process
// GoChannel, so it needs no services:
//
//	go run ./examples/inbox
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
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/glebarez/sqlite"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// OrderPlaced is the event consumed, as the producer emitted it.
type OrderPlaced struct{ OrderID, Customer string }

// Invoice is the consumer's own row, one per order.
type Invoice struct {
	OrderID  string `gorm:"primaryKey"`
	Customer string
}

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	dir, err := os.MkdirTemp("", "txoutbox-inbox")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	dsn := "file:" + filepath.Join(dir, "billing.db") + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_txlock=immediate"
	db, err := gorm.Open(sqlite.Open(dsn), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return err
	}
	if err := db.AutoMigrate(&Invoice{}); err != nil {
		return err
	}
	in, err := inbox.New(db, inbox.Config{})
	if err != nil {
		return err
	}
	if err := in.Migrate(ctx); err != nil { // txoutbox_inbox and txoutbox_inbox_failed
		return err
	}

	reg := handlers.NewRegistry(handlers.RegistryConfig{})
	if err := handlers.RegisterEvent[OrderPlaced](reg); err != nil {
		return err
	}
	pubsub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	defer pubsub.Close()
	consumer, err := in.NewConsumer(inbox.ConsumerConfig{
		Name:       "billing",
		Topics:     []string{"OrderPlaced"},
		Subscriber: pubsub,
		Handler: reg.HandlerFunc(func(msg *message.Message, event any) error {
			tx, err := outbox.Tx(msg.Context()) // the consumer's transaction
			if err != nil {
				return err
			}
			ev := event.(OrderPlaced)
			return tx.Create(&Invoice{OrderID: ev.OrderID, Customer: ev.Customer}).Error
		}),
	})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- consumer.Run(ctx) }()
	select {
	case <-consumer.Running(): // subscribed: GoChannel drops what nobody receives
	case err := <-done:
		return err
	}

	// What a forwarder would publish: three events, the second one twice,
	// as at-least-once delivery may.
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	var msgs []*message.Message
	for i, customer := range []string{"ada", "grace", "edsger"} {
		rec, err := enc.Encode(outbox.Entry{Event: OrderPlaced{OrderID: fmt.Sprintf("o-%d", i+1), Customer: customer}})
		if err != nil {
			return err
		}
		msgs = append(msgs, rec.Message)
	}
	msgs = append(msgs, msgs[1].Copy())
	if err := pubsub.Publish("OrderPlaced", msgs...); err != nil {
		return err
	}

	for {
		st := consumer.Stats()
		if st.Processed+st.Duplicates == int64(len(msgs)) {
			var n int64
			if err := db.Model(&Invoice{}).Count(&n).Error; err != nil {
				return err
			}
			fmt.Fprintf(out, "%d messages: %d processed, %d duplicate; %d invoices\n", len(msgs), st.Processed, st.Duplicates, n)
			cancel()
			return <-done
		}
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Millisecond):
		}
	}
}
