package handlers_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/outbox"
)

type PlaceOrder struct {
	OrderID string
	Amount  int
}

var errTooLarge = errors.New("amount too large")

// decide is a decision function: the command in, the events out.
func decide(_ context.Context, cmd PlaceOrder) ([]any, error) {
	if cmd.Amount > 100 {
		return []any{OrderCancelled{OrderID: cmd.OrderID}}, errTooLarge
	}
	if cmd.Amount == 0 {
		return nil, nil
	}
	return []any{OrderPlaced{OrderID: cmd.OrderID, Amount: cmd.Amount}, OrderCancelled{OrderID: "previous"}}, nil
}

func TestReturning(t *testing.T) {
	t.Parallel()
	h := handlers.Returning(decide)
	run := func(cmd PlaceOrder) ([]any, error) {
		col := outbox.NewCollector(false)
		ctx := outbox.WithCollector(context.Background(), col, outbox.Command{Name: "PlaceOrder"})
		err := h(ctx, cmd)
		var evs []any
		for _, e := range col.Entries() {
			evs = append(evs, e.Event)
		}
		return evs, err
	}

	evs, err := run(PlaceOrder{OrderID: "o-1", Amount: 3})
	require.NoError(t, err)
	require.Equal(t, []any{OrderPlaced{OrderID: "o-1", Amount: 3}, OrderCancelled{OrderID: "previous"}}, evs, "emitted in order")

	evs, err = run(PlaceOrder{OrderID: "o-2", Amount: 300})
	require.Equal(t, errTooLarge, err, "the error, unchanged")
	require.Empty(t, evs, "events returned with an error are dropped")

	evs, err = run(PlaceOrder{OrderID: "o-3"})
	require.NoError(t, err)
	require.Empty(t, evs)

	// Outside a transactional handler Emit's error surfaces.
	require.ErrorIs(t, h(context.Background(), PlaceOrder{OrderID: "o-4", Amount: 1}), outbox.ErrNoTransaction)

	// A nil event fails like Emit(nil).
	nilEvent := handlers.Returning(func(context.Context, PlaceOrder) ([]any, error) { return []any{nil}, nil })
	col := outbox.NewCollector(false)
	err = nilEvent(outbox.WithCollector(context.Background(), col, outbox.Command{}), PlaceOrder{})
	require.ErrorIs(t, err, outbox.ErrNilEvent)

	// A nil function stays nil, so bus.Register rejects it.
	require.Nil(t, handlers.Returning[PlaceOrder](nil))
	require.ErrorIs(t, bus.Register(bus.New(), handlers.Returning[PlaceOrder](nil)), bus.ErrInvalidRegistration)
}
