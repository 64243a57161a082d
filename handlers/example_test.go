package handlers_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/outbox"
)

// A consumer registers the events it understands and decodes each message
// into the type the producer emitted.
func ExampleRegistry() {
	enc := outbox.NewEncoder(outbox.EncoderConfig{}) // the producer's
	reg := handlers.NewRegistry(handlers.RegistryConfig{Marshaler: enc.Marshaler()})
	if err := handlers.RegisterEvent[OrderPlaced](reg); err != nil {
		panic(err)
	}
	fmt.Println(errors.Is(handlers.RegisterEvent[OrderPlaced](reg), handlers.ErrDuplicateEvent))

	// What arrives from the broker: a message the outbox encoded.
	rec, _ := enc.Encode(outbox.Entry{Event: OrderPlaced{OrderID: "o-1", Amount: 3}})
	msg := rec.Message

	ev, err := reg.Decode(msg)
	if err != nil {
		panic(err)
	}
	switch ev := ev.(type) {
	case OrderPlaced:
		fmt.Printf("order %s placed, amount %d\n", ev.OrderID, ev.Amount)
	}

	rec, _ = enc.Encode(outbox.Entry{Event: OrderCancelled{OrderID: "o-1"}})
	_, err = reg.Decode(rec.Message)
	fmt.Println(errors.Is(err, handlers.ErrUnknownEvent))

	// As a Watermill handler that acks events it does not know.
	lenient := handlers.NewRegistry(handlers.RegistryConfig{AckUnknown: true})
	_ = handlers.RegisterEvent[OrderPlaced](lenient)
	h := lenient.HandlerFunc(func(msg *message.Message, event any) error {
		fmt.Printf("handled %T\n", event)
		return nil
	})
	fmt.Println(h(msg), h(rec.Message))
	// Output:
	// true
	// order o-1 placed, amount 3
	// true
	// handled handlers_test.OrderPlaced
	// <nil> <nil>
}

// A decision function returns its events; Returning emits them.
func ExampleReturning() {
	decide := func(_ context.Context, cmd PlaceOrder) ([]any, error) {
		if cmd.Amount <= 0 {
			return nil, errors.New("amount must be positive")
		}
		return []any{OrderPlaced{OrderID: cmd.OrderID, Amount: cmd.Amount}}, nil
	}
	h := handlers.Returning(decide) // a bus.HandlerFunc[PlaceOrder]

	// Under the transactional middleware the events are saved at commit;
	// here a collector stands in for it.
	col := outbox.NewCollector(false)
	ctx := outbox.WithCollector(context.Background(), col, outbox.Command{Name: "PlaceOrder"})
	fmt.Println(h(ctx, PlaceOrder{OrderID: "o-1", Amount: 3}))
	fmt.Println(h(ctx, PlaceOrder{OrderID: "o-2"}))
	for _, e := range col.Entries() {
		fmt.Printf("%+v\n", e.Event)
	}
	// Output:
	// <nil>
	// amount must be positive
	// {OrderID:o-1 Amount:3}
}
