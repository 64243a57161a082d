package middleware_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
)

var cqrsMarshaler = cqrs.JSONMarshaler{GenerateName: cqrs.StructName}

// runRouter runs router until the test ends.
func runRouter(t *testing.T, router *message.Router) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- router.Run(context.Background()) }()
	t.Cleanup(func() {
		require.NoError(t, router.Close())
		require.NoError(t, <-done)
	})
	select {
	case <-router.Running():
	case <-time.After(10 * time.Second):
		t.Fatal("router not running")
	}
}

// TestCommandProcessorOnHandle runs Watermill CQRS on GoChannel: the
// command handler runs in a transaction, its events (from a cqrs.EventBus
// on gormstore.Publisher and from outbox.Emit) go to the outbox with the
// business row, share the command message's correlation ID, and vanish
// with the row when the handler fails. The OnHandle passed as next runs
// inside the transaction.
func TestCommandProcessorOnHandle(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.Postgres)
	logger := watermill.NopLogger{}
	goch := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, logger)
	t.Cleanup(func() { _ = goch.Close() })

	pub, err := gormstore.NewPublisher(f.store)
	require.NoError(t, err)
	eventBus, err := cqrs.NewEventBusWithConfig(pub, cqrs.EventBusConfig{
		GeneratePublishTopic: func(p cqrs.GenerateEventPublishTopicParams) (string, error) { return "events." + p.EventName, nil },
		Marshaler:            cqrsMarshaler,
	})
	require.NoError(t, err)

	router, err := message.NewRouter(message.RouterConfig{}, logger)
	require.NoError(t, err)
	var nextCalls atomic.Int32
	proc, err := cqrs.NewCommandProcessorWithConfig(router, cqrs.CommandProcessorConfig{
		GenerateSubscribeTopic: func(p cqrs.CommandProcessorGenerateSubscribeTopicParams) (string, error) {
			return "commands." + p.CommandName, nil
		},
		SubscriberConstructor: func(cqrs.CommandProcessorSubscriberConstructorParams) (message.Subscriber, error) {
			return goch, nil
		},
		Marshaler:                cqrsMarshaler,
		AckCommandHandlingErrors: true, // a failed command is not redelivered
		OnHandle: f.tm.CommandProcessorOnHandle(func(p cqrs.CommandProcessorOnHandleParams) error {
			nextCalls.Add(1)
			if _, err := outbox.Tx(p.Message.Context()); err != nil {
				return err // next must run inside the transaction
			}
			return p.Handler.Handle(p.Message.Context(), p.Command)
		}),
	})
	require.NoError(t, err)
	handled := make(chan string, 4)
	require.NoError(t, proc.AddHandlers(cqrs.NewCommandHandler("PlaceOrderHandler", func(ctx context.Context, cmd *PlaceOrder) error {
		defer func() { handled <- cmd.OrderID }()
		if err := insertOrder(ctx, cmd.OrderID, cmd.Amount); err != nil {
			return err
		}
		if err := eventBus.Publish(ctx, OrderPlaced{OrderID: cmd.OrderID, Amount: cmd.Amount}); err != nil {
			return err
		}
		if err := outbox.Emit(ctx, OrderShipped{OrderID: cmd.OrderID}); err != nil {
			return err
		}
		if cmd.Amount < 0 {
			return errors.New("negative amount")
		}
		return nil
	})))
	runRouter(t, router)

	commandBus, err := cqrs.NewCommandBusWithConfig(goch, cqrs.CommandBusConfig{
		GeneratePublishTopic: func(p cqrs.CommandBusGeneratePublishTopicParams) (string, error) {
			return "commands." + p.CommandName, nil
		},
		OnSend: func(p cqrs.CommandBusOnSendParams) error {
			p.Message.Metadata.Set(outbox.MetadataCorrelationID, "corr-"+p.Command.(*PlaceOrder).OrderID)
			return nil
		},
		Marshaler: cqrsMarshaler,
	})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, commandBus.Send(ctx, &PlaceOrder{OrderID: "bad", Amount: -1}))
	require.NoError(t, commandBus.Send(ctx, &PlaceOrder{OrderID: "good", Amount: 5}))
	for _, want := range []string{"bad", "good"} {
		select {
		case got := <-handled:
			require.Equal(t, want, got)
		case <-time.After(10 * time.Second):
			t.Fatalf("command %s not handled", want)
		}
	}
	require.Eventually(t, func() bool { return f.orderCount(t, "") == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, int64(1), f.orderCount(t, "id = 'good'"), "the failed command's row is rolled back")
	rows := f.outbox(t)
	require.Len(t, rows, 2, "the failed command's events are rolled back")
	require.Equal(t, "events.OrderPlaced", rows[0].Topic, "EventBus topic")
	require.Equal(t, "OrderShipped", rows[1].Topic)
	for _, r := range rows {
		md := r.meta(t)
		require.Equal(t, "good", r.payloadField(t, "order_id"))
		require.Equal(t, "corr-good", md[outbox.MetadataCorrelationID], "correlation ID from the command message")
		require.Equal(t, "PlaceOrder", md[outbox.MetadataCommand])
		require.NotEmpty(t, md[outbox.MetadataCausationID])
	}
	require.Equal(t, rows[0].meta(t)[outbox.MetadataCausationID], rows[1].meta(t)[outbox.MetadataCausationID], "one command")
	require.Equal(t, int32(2), nextCalls.Load())
}

// TestEventProcessorOnHandle: an event handler (a policy) runs in a
// transaction named after the event; its reaction goes to the outbox.
func TestEventProcessorOnHandle(t *testing.T) {
	t.Parallel()
	for _, group := range []bool{false, true} {
		name := "EventProcessor"
		if group {
			name = "EventGroupProcessor"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, testdb.Postgres)
			logger := watermill.NopLogger{}
			goch := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, logger)
			t.Cleanup(func() { _ = goch.Close() })
			router, err := message.NewRouter(message.RouterConfig{}, logger)
			require.NoError(t, err)

			handled := make(chan struct{}, 1)
			handle := func(ctx context.Context, ev *OrderPlaced) error {
				defer func() { handled <- struct{}{} }()
				if err := insertOrder(ctx, ev.OrderID, ev.Amount); err != nil {
					return err
				}
				return outbox.Emit(ctx, OrderShipped{OrderID: ev.OrderID})
			}
			if group {
				proc, err := cqrs.NewEventGroupProcessorWithConfig(router, cqrs.EventGroupProcessorConfig{
					GenerateSubscribeTopic: func(cqrs.EventGroupProcessorGenerateSubscribeTopicParams) (string, error) {
						return "events", nil
					},
					SubscriberConstructor: func(cqrs.EventGroupProcessorSubscriberConstructorParams) (message.Subscriber, error) {
						return goch, nil
					},
					OnHandle:  f.tm.EventGroupProcessorOnHandle(nil),
					Marshaler: cqrsMarshaler,
				})
				require.NoError(t, err)
				require.NoError(t, proc.AddHandlersGroup("shipping", cqrs.NewGroupEventHandler(handle)))
			} else {
				proc, err := cqrs.NewEventProcessorWithConfig(router, cqrs.EventProcessorConfig{
					GenerateSubscribeTopic: func(cqrs.EventProcessorGenerateSubscribeTopicParams) (string, error) {
						return "events", nil
					},
					SubscriberConstructor: func(cqrs.EventProcessorSubscriberConstructorParams) (message.Subscriber, error) {
						return goch, nil
					},
					OnHandle:  f.tm.EventProcessorOnHandle(nil),
					Marshaler: cqrsMarshaler,
				})
				require.NoError(t, err)
				require.NoError(t, proc.AddHandlers(cqrs.NewEventHandler("ShipOnPlaced", handle)))
			}
			runRouter(t, router)

			bus, err := cqrs.NewEventBusWithConfig(goch, cqrs.EventBusConfig{
				GeneratePublishTopic: func(cqrs.GenerateEventPublishTopicParams) (string, error) { return "events", nil },
				Marshaler:            cqrsMarshaler,
			})
			require.NoError(t, err)
			require.NoError(t, bus.Publish(context.Background(), &OrderPlaced{OrderID: "o-1", Amount: 3}))
			select {
			case <-handled:
			case <-time.After(10 * time.Second):
				t.Fatal("event not handled")
			}
			require.Eventually(t, func() bool { return f.outboxCount(t) == 1 }, 10*time.Second, 10*time.Millisecond)
			require.Equal(t, int64(1), f.orderCount(t, "id = 'o-1'"))
			row := f.outbox(t)[0]
			require.Equal(t, "OrderShipped", row.Topic)
			require.Equal(t, "OrderPlaced", row.meta(t)[outbox.MetadataCommand], "the handled event names the command")
		})
	}
}

// TestHandlerMiddleware: a plain Router handler runs in a transaction; the
// messages it returns go to the outbox for its publish topic, not to the
// Router's publisher; a failed attempt leaves nothing, and the Router's
// redelivery then commits once.
func TestHandlerMiddleware(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.Postgres)
	logger := watermill.NopLogger{}
	goch := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, logger)
	t.Cleanup(func() { _ = goch.Close() })
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	require.NoError(t, err)
	router.AddMiddleware(f.tm.HandlerMiddleware())
	var attempts atomic.Int32
	router.AddHandler("ReserveStock", "in", goch, "out", goch, func(msg *message.Message) ([]*message.Message, error) {
		if err := insertOrder(msg.Context(), string(msg.Payload), 1); err != nil {
			return nil, err
		}
		out := message.NewMessage("", []byte("reserved "+string(msg.Payload)))
		if attempts.Add(1) == 1 {
			return []*message.Message{out}, errors.New("first attempt fails")
		}
		return []*message.Message{out}, nil
	})
	direct, err := goch.Subscribe(context.Background(), "out")
	require.NoError(t, err)
	runRouter(t, router)

	in := message.NewMessage(watermill.NewUUID(), []byte("o-7"))
	in.Metadata.Set(outbox.MetadataCorrelationID, "corr-7")
	require.NoError(t, goch.Publish("in", in))
	require.Eventually(t, func() bool { return f.outboxCount(t) == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, int32(2), attempts.Load())
	require.Equal(t, int64(1), f.orderCount(t, "id = 'o-7'"))
	row := f.outbox(t)[0]
	require.Equal(t, "out", row.Topic)
	require.Equal(t, "reserved o-7", string(row.Payload))
	require.Equal(t, "ReserveStock", row.meta(t)[outbox.MetadataCommand])
	require.Equal(t, "corr-7", row.meta(t)[outbox.MetadataCorrelationID])
	select {
	case m := <-direct:
		t.Fatalf("the Router published %q itself", m.Payload)
	case <-time.After(100 * time.Millisecond):
	}
}
