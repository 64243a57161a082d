package bus_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/txoutbox/txoutbox/bus"
)

type PlaceOrder struct {
	OrderID string
	Amount  int
}

type ShipOrder struct {
	OrderID string
}

// logging is bus middleware that prints each command around its handler.
func logging(next bus.Handler) bus.Handler {
	return func(ctx context.Context, cmd any) error {
		fmt.Printf("-> %T\n", cmd)
		err := next(ctx, cmd)
		fmt.Printf("<- %T err=%v\n", cmd, err)
		return err
	}
}

func Example() {
	ctx := context.Background()
	b := bus.New(logging)

	// Handlers receive their command already typed.
	err := bus.Register(b, func(ctx context.Context, cmd PlaceOrder) error {
		fmt.Printf("placing %s for %d\n", cmd.OrderID, cmd.Amount)
		// A handler may dispatch further commands with its context.
		return b.Dispatch(ctx, ShipOrder{OrderID: cmd.OrderID})
	})
	if err != nil {
		panic(err)
	}
	err = bus.Register(b, func(ctx context.Context, cmd ShipOrder) error {
		fmt.Printf("shipping %s\n", cmd.OrderID)
		return nil
	})
	if err != nil {
		panic(err)
	}

	if err := b.Dispatch(ctx, PlaceOrder{OrderID: "o-1", Amount: 3}); err != nil {
		panic(err)
	}

	// Registration and dispatch errors are sentinels to branch on.
	err = bus.Register(b, func(context.Context, ShipOrder) error { return nil })
	fmt.Println(errors.Is(err, bus.ErrDuplicateHandler))
	err = b.Dispatch(ctx, &ShipOrder{OrderID: "o-2"})
	fmt.Println(errors.Is(err, bus.ErrNoHandler))
	fmt.Println(err)

	// Output:
	// -> bus_test.PlaceOrder
	// placing o-1 for 3
	// -> bus_test.ShipOrder
	// shipping o-1
	// <- bus_test.ShipOrder err=<nil>
	// <- bus_test.PlaceOrder err=<nil>
	// true
	// true
	// bus: no handler registered for *bus_test.ShipOrder (a handler is registered for bus_test.ShipOrder; dispatch that form)
}
