package orders_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/example_app/internal/orders"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers/handlertest"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"gorm.io/gorm"
)

// setup migrates db and returns a test kit whose commands go through the
// orders handlers on a bus, inside the test's rolled-back transaction.
func setup(t *testing.T, db *gorm.DB) (*handlertest.Kit, *bus.Bus) {
	t.Helper()
	require.NoError(t, gormstore.Migrate(t.Context(), db))
	require.NoError(t, orders.Migrate(t.Context(), db))
	store, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)
	tx, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: store})
	require.NoError(t, err)
	b := bus.New(middleware.Recover(), tx.Middleware())
	require.NoError(t, orders.Register(b))
	return handlertest.New(t, handlertest.Config{DB: db}), b
}

func order(t *testing.T, k *handlertest.Kit, id string) orders.Order {
	t.Helper()
	var o orders.Order
	require.NoError(t, k.Tx().Where("id = ?", id).Take(&o).Error)
	return o
}

func TestPlaceOrder(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		k, b := setup(t, db)

		rec := k.Dispatch(b, orders.PlaceOrder{OrderID: "o-1", Customer: "ada", AmountCents: 1250})
		placed := handlertest.Emitted[orders.OrderPlaced](t, rec)
		require.Len(t, placed, 1)
		require.Equal(t, "o-1", placed[0].OrderID)
		require.Equal(t, "ada", placed[0].Customer)
		require.EqualValues(t, 1250, placed[0].AmountCents)
		require.Equal(t, 1, placed[0].Version)
		require.Equal(t, "o-1", rec.Records()[0].PartitionKey, "the partition key is the order ID")

		o := order(t, k, "o-1")
		require.Equal(t, orders.StatusPlaced, o.Status)
		require.Equal(t, 1, o.Version)

		rec = k.Dispatch(b, orders.PlaceOrder{OrderID: "o-1", Customer: "bob", AmountCents: 1})
		require.ErrorIs(t, rec.Err(), orders.ErrAlreadyExists)
		require.ErrorIs(t, rec.Err(), orders.ErrConflict)
		require.Zero(t, rec.Len(), "a rejected command emits nothing")
		require.Equal(t, "ada", order(t, k, "o-1").Customer, "the first order stays")
	})
}

func TestPlaceOrderRejectsBadInput(t *testing.T) {
	t.Parallel()
	k, b := setup(t, testdb.OpenSQLite(t))
	for name, cmd := range map[string]orders.PlaceOrder{
		"no id":           {Customer: "ada", AmountCents: 1},
		"bad id":          {OrderID: "o 1", Customer: "ada", AmountCents: 1},
		"long id":         {OrderID: fmt.Sprintf("%065d", 1), Customer: "ada", AmountCents: 1},
		"no customer":     {OrderID: "o-1", AmountCents: 1},
		"zero amount":     {OrderID: "o-1", Customer: "ada"},
		"negative amount": {OrderID: "o-1", Customer: "ada", AmountCents: -5},
		"blank customer":  {OrderID: "o-1", Customer: " \t\n", AmountCents: 1},
		"NUL in customer": {OrderID: "o-1", Customer: "a\x00b", AmountCents: 1},
		"bad UTF-8":       {OrderID: "o-1", Customer: "a\xffb", AmountCents: 1},
		"long customer":   {OrderID: "o-1", Customer: strings.Repeat("x", orders.MaxCustomerLength+1), AmountCents: 1},
		"NUL in id":       {OrderID: "o\x001", Customer: "ada", AmountCents: 1},
	} {
		rec := k.Dispatch(b, cmd)
		require.ErrorIs(t, rec.Err(), orders.ErrInvalid, name)
		require.Zero(t, rec.Len(), name)
	}
	var n int64
	require.NoError(t, k.Tx().Model(&orders.Order{}).Count(&n).Error)
	require.Zero(t, n)
}

func TestPayAndCancelRules(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		k, b := setup(t, db)
		for _, id := range []string{"paid", "cancelled"} {
			require.NoError(t, k.Dispatch(b, orders.PlaceOrder{OrderID: id, Customer: "ada", AmountCents: 100}).Err())
		}

		rec := k.Dispatch(b, orders.PayOrder{OrderID: "paid"})
		paid := handlertest.Emitted[orders.OrderPaid](t, rec)
		require.Equal(t, orders.OrderPaid{OrderID: "paid", AmountCents: 100, Version: 2, PaidAt: paid[0].PaidAt}, paid[0])
		require.Equal(t, orders.StatusPaid, order(t, k, "paid").Status)

		rec = k.Dispatch(b, orders.CancelOrder{OrderID: "cancelled", Reason: "too slow"})
		cancelled := handlertest.Emitted[orders.OrderCancelled](t, rec)
		require.Equal(t, "too slow", cancelled[0].Reason)
		require.Equal(t, 2, cancelled[0].Version)
		require.Equal(t, orders.StatusCancelled, order(t, k, "cancelled").Status)

		for _, tc := range []struct {
			name string
			cmd  any
			want error
		}{
			{"pay twice", orders.PayOrder{OrderID: "paid"}, orders.ErrAlreadyPaid},
			{"cancel a paid order", orders.CancelOrder{OrderID: "paid"}, orders.ErrPaid},
			{"pay a cancelled order", orders.PayOrder{OrderID: "cancelled"}, orders.ErrCancelled},
			{"cancel twice", orders.CancelOrder{OrderID: "cancelled"}, orders.ErrCancelled},
			{"pay an unknown order", orders.PayOrder{OrderID: "nope"}, orders.ErrNotFound},
			{"cancel an unknown order", orders.CancelOrder{OrderID: "nope"}, orders.ErrNotFound},
			{"pay without an ID", orders.PayOrder{}, orders.ErrInvalid},
			{"cancel with a bad ID", orders.CancelOrder{OrderID: "a/b"}, orders.ErrInvalid},
			{"cancel with a NUL in the reason", orders.CancelOrder{OrderID: "paid", Reason: "a\x00"}, orders.ErrInvalid},
			{"cancel with a long reason", orders.CancelOrder{OrderID: "paid", Reason: strings.Repeat("x", orders.MaxReasonLength+1)}, orders.ErrInvalid},
		} {
			rec := k.Dispatch(b, tc.cmd)
			require.ErrorIs(t, rec.Err(), tc.want, tc.name)
			require.Zero(t, rec.Len(), "%s: a rejected command emits nothing", tc.name)
		}
		require.Equal(t, 2, order(t, k, "paid").Version, "rejected commands change nothing")
		require.Equal(t, 2, order(t, k, "cancelled").Version)
	})
}

// Concurrent commands on one order: exactly one wins, the others see the
// rule it made true, and the outbox holds one event per change.
func TestConcurrentCommandsOnOneOrder(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		require.NoError(t, gormstore.Migrate(ctx, db))
		require.NoError(t, orders.Migrate(ctx, db))
		store, err := gormstore.New(db, gormstore.Config{})
		require.NoError(t, err)
		tx, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: store})
		require.NoError(t, err)
		b := bus.New(middleware.Recover(), tx.Middleware())
		require.NoError(t, orders.Register(b))
		require.NoError(t, b.Dispatch(ctx, orders.PlaceOrder{OrderID: "o-1", Customer: "ada", AmountCents: 5}))

		const n = 8
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if i%2 == 0 {
					errs[i] = b.Dispatch(ctx, orders.PayOrder{OrderID: "o-1"})
				} else {
					errs[i] = b.Dispatch(ctx, orders.CancelOrder{OrderID: "o-1"})
				}
			})
		}
		wg.Wait()
		var ok int
		for _, err := range errs {
			if err == nil {
				ok++
				continue
			}
			require.True(t, errors.Is(err, orders.ErrConflict), "unexpected error: %v", err)
		}
		require.Equal(t, 1, ok, "exactly one of the concurrent commands succeeds: %v", errs)
		require.EqualValues(t, 2, testdb.Count(t, db, "txoutbox_outbox", ""), "OrderPlaced and one OrderPaid or OrderCancelled")
		var o orders.Order
		require.NoError(t, db.Take(&o, "id = ?", "o-1").Error)
		require.Equal(t, 2, o.Version)
	})
}

// The validation errors name the field and what is wrong with it.
func TestValidateMessages(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cmd  interface{ Validate() error }
		want string
	}{
		{orders.PlaceOrder{OrderID: "o-1", Customer: "  ", AmountCents: 1}, "invalid command: missing customer"},
		{orders.PlaceOrder{OrderID: "o-1", Customer: "a\x00b", AmountCents: 1}, "invalid command: customer contains the control character U+0000 at byte 1"},
		{orders.PlaceOrder{OrderID: "o-1", Customer: "a\xff", AmountCents: 1}, "invalid command: customer is not valid UTF-8"},
		{orders.PlaceOrder{OrderID: "o-1", Customer: strings.Repeat("é", 201), AmountCents: 1}, "invalid command: customer longer than 200 characters"},
		{orders.CancelOrder{OrderID: "o-1", Reason: "x\u0085"}, "invalid command: reason contains the control character U+0085 at byte 1"},
		{orders.CancelOrder{OrderID: "", Reason: "x"}, "invalid command: missing order ID"},
	} {
		err := tc.cmd.Validate()
		require.ErrorIs(t, err, orders.ErrInvalid, tc.want)
		require.EqualError(t, err, tc.want)
	}
	require.NoError(t, orders.PlaceOrder{OrderID: "o-1", Customer: strings.Repeat("é", 200), AmountCents: 1}.Validate())
	require.NoError(t, orders.CancelOrder{OrderID: "o-1", Reason: "line one\nline two\ttab\r\n"}.Validate())
	require.NoError(t, orders.ValidateID("o-1.x_Y"))
	require.ErrorIs(t, orders.ValidateID("o 1"), orders.ErrInvalid)
}
