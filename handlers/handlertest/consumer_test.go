package handlertest_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/handlers/handlertest"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

// A consumer behind the inbox is tested with the kit too: Kit.Run gives the
// message a context with the test's transaction, the inbox joins it, and
// the events of the commands the consumer dispatches are recorded.
func TestConsumerBehindInbox(t *testing.T) {
	t.Parallel()
	for _, d := range testdb.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			db := openDB(t, d)
			require.NoError(t, inbox.Migrate(context.Background(), db))
			in, err := inbox.New(db, inbox.Config{})
			require.NoError(t, err)
			store, err := gormstore.New(db, gormstore.Config{})
			require.NoError(t, err)
			tm, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: store})
			require.NoError(t, err)
			b := bus.New(tm.Middleware())
			require.NoError(t, bus.Register(b, placeOrder))

			reg := handlers.NewRegistry(handlers.RegistryConfig{})
			require.NoError(t, handlers.RegisterEvent[OrderCancelled](reg))
			consume := in.Middleware("reorder")(func(msg *message.Message) ([]*message.Message, error) {
				return nil, reg.HandlerFunc(func(msg *message.Message, event any) error {
					ev := event.(OrderCancelled)
					return b.Dispatch(msg.Context(), PlaceOrder{OrderID: ev.OrderID + "-again", Amount: 1})
				})(msg)
			})

			enc := outbox.NewEncoder(outbox.EncoderConfig{})
			incoming, err := enc.Encode(outbox.Entry{Event: OrderCancelled{OrderID: "o-1"}})
			require.NoError(t, err)

			k := handlertest.New(t, handlertest.Config{DB: db})
			deliver := func() *handlertest.Recording {
				return k.Run("Deliver", func(ctx context.Context) error {
					msg := incoming.Message.Copy()
					msg.SetContext(ctx)
					_, err := consume(msg)
					return err
				})
			}
			rec := deliver()
			handlertest.EmittedNames(t, rec, "OrderPlaced", "AuditLogged")
			require.Equal(t, "o-1-again", handlertest.Emitted[OrderPlaced](t, rec)[0].OrderID)

			// Redelivered: acked without running the consumer again.
			handlertest.NoEvents(t, deliver())
			require.EqualValues(t, 1, testdb.Count(t, k.Tx(), "orders", ""))
			require.EqualValues(t, 1, testdb.Count(t, k.Tx(), inbox.DefaultTable, ""))
		})
	}
}
