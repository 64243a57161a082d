package handlertest_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/handlers/handlertest"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// These tests check the kit itself: each runs an inner test on a fake
// testing.TB and asserts that the kit failed it (and stopped it) with a
// message that says what was expected and what was emitted. Each runs
// without a database, on PostgreSQL and on SQLite.

// innerTest is a user's handler test: it runs h and asserts that it placed
// order o-1.
func innerTest(db *gorm.DB, h func(ctx context.Context, cmd PlaceOrder) error) func(tb testing.TB) {
	return func(tb testing.TB) {
		k := handlertest.New(tb, handlertest.Config{DB: db})
		rec := handlertest.Call(k, h, PlaceOrder{OrderID: "o-1", Amount: 3})
		placed := handlertest.Emitted[OrderPlaced](tb, rec)
		require.Equal(tb, []OrderPlaced{{OrderID: "o-1", Amount: 3}}, placed)
	}
}

func TestKitPassesTheRightHandler(t *testing.T) {
	t.Parallel()
	eachMode(t, func(t *testing.T, db *gorm.DB) {
		requirePassed(t, runInner(t, innerTest(db, func(ctx context.Context, cmd PlaceOrder) error {
			return outbox.Emit(ctx, OrderPlaced{OrderID: cmd.OrderID, Amount: cmd.Amount})
		})))
	})
}

func TestKitCatchesTheWrongEvent(t *testing.T) {
	t.Parallel()
	eachMode(t, func(t *testing.T, db *gorm.DB) {
		res := runInner(t, innerTest(db, func(ctx context.Context, cmd PlaceOrder) error {
			return outbox.Emit(ctx, OrderCancelled{OrderID: cmd.OrderID}, AuditLogged{What: "cancelled"})
		}))
		requireFailed(t, res, "handlertest: expected at least one OrderPlaced event, emitted 2:\n"+
			"\t1. OrderCancelled  topic \"OrderCancelled\"\n"+
			"\t2. AuditLogged  topic \"audit\"")
	})
}

func TestKitCatchesNoEvent(t *testing.T) {
	t.Parallel()
	eachMode(t, func(t *testing.T, db *gorm.DB) {
		res := runInner(t, innerTest(db, func(context.Context, PlaceOrder) error { return nil }))
		requireFailed(t, res, "handlertest: expected at least one OrderPlaced event, emitted nothing")
	})
}

func TestKitCatchesAnUnmarshalableEvent(t *testing.T) {
	t.Parallel()
	eachMode(t, func(t *testing.T, db *gorm.DB) {
		res := runInner(t, innerTest(db, func(ctx context.Context, cmd PlaceOrder) error {
			return outbox.Emit(ctx, OrderPlaced{OrderID: cmd.OrderID, Amount: cmd.Amount}, Unmarshalable{Callback: func() {}})
		}))
		requireFailed(t, res,
			"handlertest: the command failed, so it emitted nothing:\n",
			"outbox: cannot marshal event handlertest_test.Unmarshalable: json: unsupported type: func()")

		// The same holds for a test that only checks there are no events.
		res = runInner(t, func(tb testing.TB) {
			k := handlertest.New(tb, handlertest.Config{DB: db})
			handlertest.NoEvents(tb, k.Run("Notify", func(ctx context.Context) error {
				return outbox.Emit(ctx, Unmarshalable{})
			}))
		})
		requireFailed(t, res, "cannot marshal event")
	})
}

func TestKitCatchesWrongNamesAndOrder(t *testing.T) {
	t.Parallel()
	eachMode(t, func(t *testing.T, db *gorm.DB) {
		emitTwo := func(ctx context.Context) error {
			return outbox.Emit(ctx, OrderPlaced{OrderID: "o-1"}, AuditLogged{What: "x"})
		}
		requirePassed(t, runInner(t, func(tb testing.TB) {
			handlertest.EmittedNames(tb, handlertest.New(tb, handlertest.Config{DB: db}).Run("Two", emitTwo), "OrderPlaced", "AuditLogged")
		}))
		want := "emitted 2:\n\t1. OrderPlaced  topic \"OrderPlaced\"  partition key \"order-o-1\"\n\t2. AuditLogged  topic \"audit\""
		for _, c := range []struct {
			names  []string
			expect string
		}{
			{[]string{"AuditLogged", "OrderPlaced"}, "expected events [AuditLogged, OrderPlaced]"},
			{[]string{"OrderPlaced"}, "expected events [OrderPlaced]"},
			{[]string{"OrderPlaced", "AuditLogged", "AuditLogged"}, "expected events [OrderPlaced, AuditLogged, AuditLogged]"},
			{nil, "expected no events"},
		} {
			res := runInner(t, func(tb testing.TB) {
				handlertest.EmittedNames(tb, handlertest.New(tb, handlertest.Config{DB: db}).Run("Two", emitTwo), c.names...)
			})
			requireFailed(t, res, "handlertest: "+c.expect+", "+want)
		}
		res := runInner(t, func(tb testing.TB) {
			handlertest.NoEvents(tb, handlertest.New(tb, handlertest.Config{DB: db}).Run("Two", emitTwo))
		})
		requireFailed(t, res, "handlertest: expected no events, "+want)
	})
}

// A message that carries the right name but a payload its type cannot
// decode (here written by EmitMessage) fails Emitted with the decode error.
func TestKitCatchesAnUndecodableEvent(t *testing.T) {
	t.Parallel()
	eachMode(t, func(t *testing.T, db *gorm.DB) {
		res := runInner(t, func(tb testing.TB) {
			k := handlertest.New(tb, handlertest.Config{DB: db})
			rec := k.Run("Raw", func(ctx context.Context) error {
				msg := newMessage(`{"amount":"three"}`)
				msg.Metadata.Set(outbox.MetadataName, "OrderPlaced")
				return outbox.EmitMessage(ctx, "orders", msg)
			})
			handlertest.EmittedNames(tb, rec, "OrderPlaced")
			handlertest.Emitted[OrderPlaced](tb, rec)
		})
		requireFailed(t, res, `handlertest: handlers: cannot decode event "OrderPlaced" (handlertest_test.OrderPlaced)`)
	})
}
