package middleware_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

// placeOrder is a plain function handler, as another mediator would hold.
func placeOrder(ctx context.Context, cmd PlaceOrder) error {
	if err := insertOrder(ctx, cmd.OrderID, cmd.Amount); err != nil {
		return err
	}
	if err := outbox.Emit(ctx, OrderPlaced{OrderID: cmd.OrderID, Amount: cmd.Amount}); err != nil {
		return err
	}
	if cmd.Amount < 0 {
		return errors.New("negative amount")
	}
	return nil
}

// TestWrap: the wrapped function commits its row and events together,
// names the command after its type, rolls back on error, and joins the
// transaction of a caller that has one.
func TestWrap(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d)
		ctx := context.Background()
		handle := middleware.Wrap(f.tm, placeOrder)

		require.NoError(t, handle(ctx, PlaceOrder{OrderID: "o-1", Amount: 1}))
		rows := f.outbox(t)
		require.Len(t, rows, 1)
		require.Equal(t, "PlaceOrder", rows[0].meta(t)[outbox.MetadataCommand])
		require.Equal(t, int64(1), f.orderCount(t, "id = 'o-1'"))

		require.EqualError(t, handle(ctx, PlaceOrder{OrderID: "o-2", Amount: -1}), "negative amount")
		require.Zero(t, f.orderCount(t, "id = 'o-2'"))
		require.Equal(t, int64(1), f.outboxCount(t))

		// Called from another command's handler: one transaction, and the
		// outer failure discards the nested command's work too.
		errOuter := errors.New("outer fails")
		err := f.tm.Run(ctx, "Outer", func(ctx context.Context) error {
			require.NoError(t, handle(ctx, PlaceOrder{OrderID: "o-3", Amount: 3}))
			tx, err := outbox.Tx(ctx)
			require.NoError(t, err)
			var n int64
			require.NoError(t, tx.Raw("SELECT count(*) FROM orders WHERE id = 'o-3'").Scan(&n).Error)
			require.Equal(t, int64(1), n, "the nested command wrote in the caller's transaction")
			return errOuter
		})
		require.ErrorIs(t, err, errOuter)
		require.Zero(t, f.orderCount(t, "id = 'o-3'"))
		require.Equal(t, int64(1), f.outboxCount(t))
	})
}

// TestWrapResult returns the handler's result only when it committed.
func TestWrapResult(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.Postgres)
	ctx := context.Background()
	handle := middleware.WrapResult(f.tm, func(ctx context.Context, cmd PlaceOrder) (string, error) {
		return "order " + cmd.OrderID, placeOrder(ctx, cmd)
	})
	got, err := handle(ctx, PlaceOrder{OrderID: "o-1", Amount: 1})
	require.NoError(t, err)
	require.Equal(t, "order o-1", got)
	got, err = handle(ctx, PlaceOrder{OrderID: "o-2", Amount: -1})
	require.EqualError(t, err, "negative amount")
	require.Empty(t, got, "no result without a commit")
	require.Equal(t, int64(1), f.outboxCount(t))
}

func TestWrapNil(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.SQLite)
	require.Panics(t, func() { middleware.Wrap[PlaceOrder](nil, placeOrder) })
	require.Panics(t, func() { middleware.Wrap[PlaceOrder](f.tm, nil) })
	require.Panics(t, func() { middleware.WrapResult[PlaceOrder, int](f.tm, nil) })
}
