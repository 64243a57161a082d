package middleware_test

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

// defaultAMQPURL is the RabbitMQ used when TEST_AMQP_URL is not set
// (`make test` starts it with scripts/ensure-services.sh).
const defaultAMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

func amqpURL() string { return cmp.Or(os.Getenv("TEST_AMQP_URL"), defaultAMQPURL) }

// amqpConfig is the RabbitMQ config of the tests: non-durable queues named
// after the topic, on the default exchange.
func amqpConfig() amqp.Config { return amqp.NewNonDurableQueueConfig(amqpURL()) }

// deleteQueuesAtEnd deletes the named queues when t ends, after every
// later-registered cleanup (the consumers are gone by then).
func deleteQueuesAtEnd(t *testing.T, queues ...string) {
	t.Helper()
	t.Cleanup(func() {
		conn, err := amqp091.Dial(amqpURL())
		if err != nil {
			t.Errorf("delete test queues: %v", err)
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("delete test queues: %v", err)
			return
		}
		defer ch.Close()
		for _, q := range queues {
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				t.Errorf("delete queue %s: %v", q, err)
				return
			}
		}
	})
}

// TestCQRSOverRabbitMQ is the end-to-end path of a Watermill CQRS service
// on RabbitMQ:
//
//	cqrs.CommandBus → RabbitMQ → cqrs.CommandProcessor (OnHandle:
//	Transactional) → handler writes an order and publishes OrderPlaced on a
//	cqrs.EventBus over gormstore.Publisher → outbox row, same transaction
//	→ outbox.Forwarder → RabbitMQ → received.
//
// A command whose handler fails (after writing its order and publishing
// its event) leaves neither order nor event. Queues are named for this
// test run alone.
func TestCQRSOverRabbitMQ(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	logger := watermill.NewSlogLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	prefix := "txoutbox_test_" + randomHex(t) + "."
	deleteQueuesAtEnd(t, prefix+"PlaceOrder", prefix+"OrderPlaced")

	f := newFixture(t, testdb.Postgres)
	amqpPub, err := amqp.NewPublisher(amqpConfig(), logger)
	require.NoError(t, err, "RabbitMQ at %s is required (set TEST_AMQP_URL, or run `make test` which starts it)", amqpURL())
	t.Cleanup(func() { _ = amqpPub.Close() })

	// The forwarder relays the outbox to RabbitMQ, woken at each commit.
	fwd, err := outbox.NewForwarder(f.store, amqpPub, outbox.ForwarderConfig{PollInterval: 500 * time.Millisecond})
	require.NoError(t, err)
	tm, err := middleware.NewTransactional(middleware.TransactionalConfig{
		DB: f.db, Store: f.store,
		Wake: fwd,
	})
	require.NoError(t, err)
	fwdDone := make(chan error, 1)
	fwdCtx, stopFwd := context.WithCancel(ctx)
	go func() { fwdDone <- fwd.Run(fwdCtx) }()
	t.Cleanup(func() {
		stopFwd()
		require.NoError(t, <-fwdDone)
	})

	// The event consumer: a plain subscription to the event's queue,
	// declared before anything is published to it.
	eventTopic := prefix + "OrderPlaced"
	eventSub, err := amqp.NewSubscriber(amqpConfig(), logger)
	require.NoError(t, err)
	t.Cleanup(func() { _ = eventSub.Close() })
	events, err := eventSub.Subscribe(ctx, eventTopic)
	require.NoError(t, err)

	// The command side.
	outboxPub, err := gormstore.NewPublisher(f.store)
	require.NoError(t, err)
	eventBus, err := cqrs.NewEventBusWithConfig(outboxPub, cqrs.EventBusConfig{
		GeneratePublishTopic: func(p cqrs.GenerateEventPublishTopicParams) (string, error) { return prefix + p.EventName, nil },
		Marshaler:            cqrsMarshaler,
		Logger:               logger,
	})
	require.NoError(t, err)
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	require.NoError(t, err)
	proc, err := cqrs.NewCommandProcessorWithConfig(router, cqrs.CommandProcessorConfig{
		GenerateSubscribeTopic: func(p cqrs.CommandProcessorGenerateSubscribeTopicParams) (string, error) {
			return prefix + p.CommandName, nil
		},
		SubscriberConstructor: func(cqrs.CommandProcessorSubscriberConstructorParams) (message.Subscriber, error) {
			return amqp.NewSubscriber(amqpConfig(), logger)
		},
		Marshaler: cqrsMarshaler,
		Logger:    logger,
		// Ack a failed command instead of requeueing it forever.
		AckCommandHandlingErrors: true,
		OnHandle:                 tm.CommandProcessorOnHandle(nil),
	})
	require.NoError(t, err)
	var handled atomic.Int32
	require.NoError(t, proc.AddHandlers(cqrs.NewCommandHandler("PlaceOrderHandler", func(ctx context.Context, cmd *PlaceOrder) error {
		defer handled.Add(1)
		if err := insertOrder(ctx, cmd.OrderID, cmd.Amount); err != nil {
			return err
		}
		if err := eventBus.Publish(ctx, &OrderPlaced{OrderID: cmd.OrderID, Amount: cmd.Amount}); err != nil {
			return err
		}
		if cmd.Amount < 0 {
			return errors.New("negative amount") // after the write and the event: both must vanish
		}
		return nil
	})))
	runRouter(t, router)

	cmdPub, err := amqp.NewPublisher(amqpConfig(), logger)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cmdPub.Close() })
	commandBus, err := cqrs.NewCommandBusWithConfig(cmdPub, cqrs.CommandBusConfig{
		GeneratePublishTopic: func(p cqrs.CommandBusGeneratePublishTopicParams) (string, error) { return prefix + p.CommandName, nil },
		OnSend: func(p cqrs.CommandBusOnSendParams) error {
			p.Message.Metadata.Set(outbox.MetadataCorrelationID, "corr-"+p.Command.(*PlaceOrder).OrderID)
			return nil
		},
		Marshaler: cqrsMarshaler,
		Logger:    logger,
	})
	require.NoError(t, err)

	// One processor consumes the command queue in order: the failing
	// command is handled before the good one.
	require.NoError(t, commandBus.Send(ctx, &PlaceOrder{OrderID: "bad", Amount: -1}))
	require.NoError(t, commandBus.Send(ctx, &PlaceOrder{OrderID: "good", Amount: 42}))

	var got *message.Message
	select {
	case got = <-events:
		got.Ack()
	case <-ctx.Done():
		t.Fatalf("no event from RabbitMQ (commands handled: %d)", handled.Load())
	}
	var ev OrderPlaced
	require.NoError(t, json.Unmarshal(got.Payload, &ev))
	require.Equal(t, OrderPlaced{OrderID: "good", Amount: 42}, ev)
	require.Equal(t, "corr-good", got.Metadata.Get(outbox.MetadataCorrelationID), "correlation ID from the command message")
	require.Equal(t, "PlaceOrder", got.Metadata.Get(outbox.MetadataCommand))
	require.Equal(t, "OrderPlaced", got.Metadata.Get(outbox.MetadataName))

	require.Equal(t, int32(2), handled.Load())
	require.Equal(t, int64(1), f.orderCount(t, "id = 'good'"))
	require.Zero(t, f.orderCount(t, "id = 'bad'"), "the failed command's order is rolled back")
	require.Eventually(t, func() bool { return f.outboxCount(t) == 0 }, 10*time.Second, 20*time.Millisecond,
		"the relayed event is deleted from the outbox")
	select {
	case m := <-events:
		t.Fatalf("unexpected second event %s: %s", m.UUID, m.Payload)
	case <-time.After(300 * time.Millisecond):
	}
}

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}
