package readmodel_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/example_app/internal/orders"
	"github.com/txoutbox/txoutbox/example_app/internal/readmodel"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

type bundle struct {
	db      *gorm.DB
	enc     *outbox.Encoder
	proj    *readmodel.Projector
	handler message.NoPublishHandlerFunc
}

func setup(t *testing.T, db *gorm.DB) *bundle {
	t.Helper()
	require.NoError(t, readmodel.Migrate(t.Context(), db))
	in, err := inbox.New(db, inbox.Config{})
	require.NoError(t, err)
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	reg, err := readmodel.NewRegistry(handlers.RegistryConfig{Marshaler: enc.Marshaler()})
	require.NoError(t, err)
	proj, err := readmodel.NewProjector(reg)
	require.NoError(t, err)
	// handler processes one message as the consumer does: in the inbox's
	// transaction, once per message UUID.
	h := proj.Handler()
	handler := func(msg *message.Message) error {
		_, err := in.Process(t.Context(), readmodel.Consumer, msg.UUID, func(ctx context.Context) error {
			orig := msg.Context()
			defer msg.SetContext(orig)
			msg.SetContext(ctx)
			return h(msg)
		})
		return err
	}
	return &bundle{db: db, enc: enc, proj: proj, handler: handler}
}

// msg encodes event as the outbox would send it.
func (b *bundle) msg(t *testing.T, event any) *message.Message {
	t.Helper()
	rec, err := b.enc.Encode(outbox.Entry{Event: event})
	require.NoError(t, err)
	return rec.Message
}

func TestProjection(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		b := setup(t, db)
		ctx := t.Context()
		at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

		_, err := readmodel.Get(ctx, db, "o-1")
		require.ErrorIs(t, err, readmodel.ErrNotFound)

		placed := b.msg(t, orders.OrderPlaced{OrderID: "o-1", Customer: "ada", AmountCents: 1250, Version: 1, PlacedAt: at})
		require.NoError(t, b.handler(placed))
		v, err := readmodel.Get(ctx, db, "o-1")
		require.NoError(t, err)
		require.Equal(t, orders.StatusPlaced, v.Status)
		require.Equal(t, 1, v.Version)
		require.Equal(t, "ada", v.Customer)
		require.True(t, at.Equal(v.PlacedAt), "placed_at %v", v.PlacedAt)

		paid := b.msg(t, orders.OrderPaid{OrderID: "o-1", AmountCents: 1250, Version: 2, PaidAt: at.Add(time.Minute)})
		require.NoError(t, b.handler(paid))
		v, err = readmodel.Get(ctx, db, "o-1")
		require.NoError(t, err)
		require.Equal(t, orders.StatusPaid, v.Status)
		require.Equal(t, 2, v.Version)
		require.NotNil(t, v.PaidAt)
		require.Nil(t, v.CancelledAt)

		require.NoError(t, b.handler(b.msg(t, orders.OrderPlaced{OrderID: "o-2", Customer: "bob", AmountCents: 5, Version: 1, PlacedAt: at})))
		require.NoError(t, b.handler(b.msg(t, orders.OrderCancelled{OrderID: "o-2", Reason: "no", Version: 2, CancelledAt: at})))
		v, err = readmodel.Get(ctx, db, "o-2")
		require.NoError(t, err)
		require.Equal(t, orders.StatusCancelled, v.Status)
		require.Equal(t, "no", v.CancelReason)

		require.Equal(t, readmodel.Stats{Applied: 4}, b.proj.Stats())
		require.EqualValues(t, 4, testdb.Count(t, db, "projected_events", ""))
		require.EqualValues(t, 4, testdb.Count(t, db, inbox.DefaultTable, "consumer = ?", readmodel.Consumer))
	})
}

// A message delivered again (by the broker or the forwarder) changes the
// read model once: the inbox acks it without running the projection.
func TestProjectionSkipsDuplicates(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		b := setup(t, db)
		placed := b.msg(t, orders.OrderPlaced{OrderID: "o-1", Customer: "ada", AmountCents: 1, Version: 1})
		paid := b.msg(t, orders.OrderPaid{OrderID: "o-1", Version: 2})
		for _, m := range []*message.Message{placed, placed, paid, placed, paid} {
			require.NoError(t, b.handler(m.Copy()))
		}
		require.Equal(t, readmodel.Stats{Applied: 2}, b.proj.Stats(), "the inbox ran the projection once per message")
		require.EqualValues(t, 1, testdb.Count(t, db, "projected_events", "message_uuid = ?", placed.UUID))
		require.EqualValues(t, 1, testdb.Count(t, db, "projected_events", "message_uuid = ?", paid.UUID))
		v, err := readmodel.Get(t.Context(), db, "o-1")
		require.NoError(t, err)
		require.Equal(t, 2, v.Version)
	})
}

// An event that does not follow the order's last one fails and leaves no
// trace, so its redelivery (after the missing event) is applied.
func TestProjectionRejectsEventsOutOfSequence(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		b := setup(t, db)
		paid := b.msg(t, orders.OrderPaid{OrderID: "o-1", Version: 2})
		require.ErrorIs(t, b.handler(paid.Copy()), readmodel.ErrOutOfSequence, "paid before placed")
		require.EqualValues(t, 0, testdb.Count(t, db, inbox.DefaultTable, ""), "a failed message is not recorded in the inbox")

		require.NoError(t, b.handler(b.msg(t, orders.OrderPlaced{OrderID: "o-1", Version: 1})))
		require.ErrorIs(t, b.handler(b.msg(t, orders.OrderPlaced{OrderID: "o-1", Version: 1})), readmodel.ErrOutOfSequence,
			"a second OrderPlaced (another message) for the same order")
		require.ErrorIs(t, b.handler(b.msg(t, orders.OrderCancelled{OrderID: "o-1", Version: 3})), readmodel.ErrOutOfSequence, "a gap")

		require.NoError(t, b.handler(paid.Copy()), "the redelivered event now follows")
		require.Equal(t, readmodel.Stats{Applied: 2, Errors: 3}, b.proj.Stats())
		v, err := readmodel.Get(t.Context(), db, "o-1")
		require.NoError(t, err)
		require.Equal(t, orders.StatusPaid, v.Status)
	})
}

func TestProjectionRejectsUnknownEvents(t *testing.T) {
	t.Parallel()
	b := setup(t, testdb.OpenSQLite(t))
	type Unrelated struct{ ID string }
	err := b.handler(b.msg(t, Unrelated{ID: "x"}))
	require.ErrorIs(t, err, handlers.ErrUnknownEvent)
	require.EqualValues(t, 0, testdb.Count(t, b.db, inbox.DefaultTable, ""))
}
