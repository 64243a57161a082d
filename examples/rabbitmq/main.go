// Command rabbitmq is the production shape: PostgreSQL and RabbitMQ. A
// command writes an order and its event in one transaction; the forwarder
// relays the event to RabbitMQ (publisher confirms, nothing dropped); an
// inbox.Consumer, in batches and with several workers, writes one invoice
// per order exactly once. The broker comes from a URL, so swapping it for
// NATS JetStream, Redis Streams or Kafka is configuration.
//
//	DATABASE_URL=postgres://postgres@127.0.0.1:5432/test?sslmode=disable \
//	AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ go run ./examples/rabbitmq
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/brokers"
	"github.com/txoutbox/txoutbox/brokers/amqp"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// PlaceOrder is the command.
type PlaceOrder struct{ OrderID, Customer string }

// OrderPlaced is the event.
type OrderPlaced struct{ OrderID, Customer string }

// PartitionKey orders the events of one order.
func (e OrderPlaced) PartitionKey() string { return e.OrderID }

// Order is the producer's row; Invoice the consumer's.
type Order struct {
	ID       string `gorm:"primaryKey"`
	Customer string
}

// Invoice is the consumer's row, one per order.
type Invoice struct {
	OrderID  string `gorm:"primaryKey"`
	Customer string
}

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
	databaseURL := cmp.Or(os.Getenv("DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	amqpURL := cmp.Or(os.Getenv("AMQP_URL"), "amqp://guest:guest@127.0.0.1:5672/")
	if err := run(context.Background(), os.Stdout, databaseURL, amqpURL); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, out io.Writer, databaseURL, amqpURL string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()

	db, err := gorm.Open(postgres.Open(databaseURL), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return err
	}
	if err := db.AutoMigrate(&Order{}, &Invoice{}); err != nil {
		return err
	}
	store, err := gormstore.New(db, gormstore.Config{})
	if err != nil {
		return err
	}
	in, err := inbox.New(db, inbox.Config{})
	if err != nil {
		return err
	}
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	if err := in.Migrate(ctx); err != nil {
		return err
	}

	// Concurrent lets the subscriber hand over up to Prefetch unacked
	// messages, so the consumer's workers can batch.
	broker, err := brokers.Open(ctx, amqpURL, brokers.Options{
		ConsumerGroup: "billing",
		AMQP:          amqp.Config{Concurrent: true, Prefetch: inbox.DefaultWorkers * inbox.DefaultBatchSize},
	})
	if err != nil {
		return err
	}
	defer broker.Close()

	// The consumer first: it declares its queue, so nothing published is
	// lost even before it runs.
	reg := handlers.NewRegistry(handlers.RegistryConfig{})
	if err := handlers.RegisterEvent[OrderPlaced](reg); err != nil {
		return err
	}
	consumer, err := in.NewConsumer(inbox.ConsumerConfig{
		Name:       "billing",
		Topics:     []string{"OrderPlaced"},
		Subscriber: broker.Subscriber,
		Handler: reg.HandlerFunc(func(msg *message.Message, event any) error {
			tx, err := outbox.Tx(msg.Context())
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
	consumed := make(chan error, 1)
	go func() { consumed <- consumer.Run(ctx) }()
	select {
	case <-consumer.Running():
	case err := <-consumed:
		return err
	}

	fwd, err := outbox.NewForwarder(store, broker.Publisher, outbox.ForwarderConfig{})
	if err != nil {
		return err
	}
	tm, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: store, Wake: fwd})
	if err != nil {
		return err
	}
	b := bus.New(middleware.Recover(), tm.Middleware())
	if err := bus.Register(b, placeOrder); err != nil {
		return err
	}
	forwarded := make(chan error, 1)
	go func() { forwarded <- fwd.Run(ctx) }()

	const orders = 100
	prefix := outbox.NewUUID()[24:] // order IDs of this run
	ids := make([]string, orders)
	start := time.Now()
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%03d", prefix, i)
		if err := b.Dispatch(ctx, PlaceOrder{OrderID: ids[i], Customer: "ada"}); err != nil {
			return err
		}
	}
	for {
		var n int64
		if err := db.Model(&Invoice{}).Where("order_id IN ?", ids).Count(&n).Error; err != nil {
			return err
		}
		if n == orders {
			fmt.Fprintf(out, "%d orders placed, relayed through RabbitMQ and invoiced once each in %s\n", orders, time.Since(start).Round(time.Millisecond))
			break
		}
		select {
		case err := <-consumed:
			return fmt.Errorf("consumer stopped: %w", err)
		case err := <-forwarded:
			return fmt.Errorf("forwarder stopped: %w", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	return errors.Join(<-consumed, <-forwarded)
}
