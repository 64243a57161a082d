package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

// OrderPlaced is the event the consumer receives.
type OrderPlaced struct {
	OrderID string `json:"order_id"`
}

// ChargeOrder is the command the consumer dispatches for each OrderPlaced.
type ChargeOrder struct {
	OrderID     string
	MessageUUID string
}

// OrderCharged is the event ChargeOrder emits.
type OrderCharged struct {
	OrderID string `json:"order_id"`
}

// End to end over a real Watermill Router: every event is published three
// times, and two consumer instances (two routers subscribed to the same
// topic) receive every copy, concurrently. The consumer dispatches a
// command that writes a row and emits an event into the outbox, all in the
// inbox transaction. One delivery of each message fails once and is
// redelivered. Each message has one effect and one outgoing event.
func TestRouterDeduplicatesDeliveries(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		ctx := context.Background()
		require.NoError(t, gormstore.Migrate(ctx, f.db))
		store, err := gormstore.New(f.db, gormstore.Config{})
		require.NoError(t, err)
		tm, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: f.db, Store: store})
		require.NoError(t, err)
		b := bus.New(tm.Middleware())
		require.NoError(t, bus.Register(b, func(ctx context.Context, cmd ChargeOrder) error {
			if err := writeEffect(ctx, "billing.charge", cmd.MessageUUID); err != nil {
				return err
			}
			return outbox.Emit(ctx, OrderCharged{OrderID: cmd.OrderID})
		}))

		reg := handlers.NewRegistry(handlers.RegistryConfig{})
		require.NoError(t, handlers.RegisterEvent[OrderPlaced](reg))

		logger := watermill.NopLogger{}
		pubSub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, logger)
		t.Cleanup(func() { _ = pubSub.Close() })

		const messages = 5
		var (
			deliveries atomic.Int32 // handled deliveries, acked or nacked
			failed     sync.Map     // message UUID -> failed once already
		)
		newRouter := func() *message.Router {
			r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, logger)
			require.NoError(t, err)
			r.AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
				return func(msg *message.Message) ([]*message.Message, error) {
					defer deliveries.Add(1)
					return h(msg)
				}
			})
			r.AddConsumerHandler("billing.charge", "orders", pubSub, reg.HandlerFunc(func(msg *message.Message, event any) error {
				ev := event.(OrderPlaced)
				if ev.OrderID == "o-2" {
					if _, loaded := failed.LoadOrStore(msg.UUID, true); !loaded {
						return errors.New("transient failure")
					}
				}
				// The command joins the inbox transaction.
				return b.Dispatch(msg.Context(), ChargeOrder{OrderID: ev.OrderID, MessageUUID: msg.UUID})
			})).AddMiddleware(f.in.Middleware("")) // consumer = handler name
			runCtx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- r.Run(runCtx) }()
			<-r.Running()
			t.Cleanup(func() {
				cancel()
				require.NoError(t, <-done)
			})
			return r
		}
		newRouter()
		newRouter()

		enc := outbox.NewEncoder(outbox.EncoderConfig{})
		var ids []string
		for i := range messages {
			rec, err := enc.Encode(outbox.Entry{Event: OrderPlaced{OrderID: fmt.Sprintf("o-%d", i)}})
			require.NoError(t, err)
			ids = append(ids, rec.Message.UUID)
			for range 3 {
				// Publish blocks until both instances acked their copy.
				require.NoError(t, pubSub.Publish("orders", rec.Message.Copy()))
			}
		}

		require.GreaterOrEqual(t, deliveries.Load(), int32(messages*3*2+1), "every copy reached both instances, plus a redelivery")
		for _, id := range ids {
			require.EqualValues(t, 1, f.effects(t, id), "message %s: one effect", id)
			require.EqualValues(t, 1, testdb.Count(t, f.db, f.in.Table(), "consumer = ? AND message_uuid = ?", "billing.charge", id))
		}
		require.EqualValues(t, messages, testdb.Count(t, f.db, gormstore.DefaultTable, ""), "one OrderCharged per message")
	})
}

// A consumer with AckUnknown acks events it has not registered (the inbox
// records them as processed); without it they fail, nothing is recorded,
// and the router nacks them.
func TestRegistryUnknownEventUnderInbox(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.SQLite, inbox.Config{})
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	rec, err := enc.Encode(outbox.Entry{Event: OrderCharged{OrderID: "o-1"}})
	require.NoError(t, err)

	for _, ack := range []bool{false, true} {
		reg := handlers.NewRegistry(handlers.RegistryConfig{AckUnknown: ack})
		require.NoError(t, handlers.RegisterEvent[OrderPlaced](reg))
		h := reg.HandlerFunc(func(*message.Message, any) error {
			t.Fatal("handler called for an unknown event")
			return nil
		})
		_, err := f.in.Middleware(fmt.Sprintf("c-%v", ack))(func(msg *message.Message) ([]*message.Message, error) {
			return nil, h(msg)
		})(rec.Message.Copy())
		if ack {
			require.NoError(t, err)
			// Acked: recorded like any processed message.
			require.EqualValues(t, 1, testdb.Count(t, f.db, f.in.Table(), "consumer = 'c-true'"))
		} else {
			require.ErrorIs(t, err, handlers.ErrUnknownEvent)
			require.EqualValues(t, 0, testdb.Count(t, f.db, f.in.Table(), "consumer = 'c-false'"))
		}
	}
}

// Messages a consumer publishes through a gormstore.Publisher with the
// message's context are written in the inbox transaction: once per
// processed message, and not at all when the handler fails.
func TestPublishInsideTheInboxTransaction(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		require.NoError(t, gormstore.Migrate(context.Background(), f.db))
		store, err := gormstore.New(f.db, gormstore.Config{})
		require.NoError(t, err)
		pub, err := gormstore.NewPublisher(store)
		require.NoError(t, err)
		fail := true
		h := f.in.Middleware("notify")(func(msg *message.Message) ([]*message.Message, error) {
			out := message.NewMessage(outbox.NewUUID(), []byte(`{}`))
			out.SetContext(msg.Context())
			if err := pub.Publish("notifications", out); err != nil {
				return nil, err
			}
			if fail {
				return nil, errors.New("fails after publishing")
			}
			return nil, nil
		})
		id := outbox.NewUUID()
		_, err = h(message.NewMessage(id, nil))
		require.Error(t, err)
		require.EqualValues(t, 0, testdb.Count(t, f.db, gormstore.DefaultTable, ""), "rolled back with the handler")
		fail = false
		for range 3 {
			_, err = h(message.NewMessage(id, nil))
			require.NoError(t, err)
		}
		require.EqualValues(t, 1, testdb.Count(t, f.db, gormstore.DefaultTable, ""), "one message for one processed delivery")
	})
}
