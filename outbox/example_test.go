package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/txoutbox/txoutbox/outbox"
)

// CartCheckedOut is the domain event of the examples.
type CartCheckedOut struct {
	CartID string `json:"cart_id"`
	Total  int    `json:"total"`
}

// PartitionKey orders the events of one cart.
func (e CartCheckedOut) PartitionKey() string { return "cart-" + e.CartID }

// A handler emits events through its context. Under the transactional
// middleware they are saved to the outbox with the command's transaction;
// here a Collector stands in for it, as test kits do.
func ExampleEmit() {
	col := outbox.NewCollector(false)
	ctx := outbox.WithCollector(context.Background(), col, outbox.Command{ID: "cmd-1", Name: "CheckOut", CorrelationID: "req-42"})

	// Inside the handler:
	if err := outbox.Emit(ctx, CartCheckedOut{CartID: "c-7", Total: 1999}); err != nil {
		fmt.Println("emit:", err)
	}

	for _, e := range col.Entries() {
		fmt.Printf("%T emitted by %s, correlation %s\n", e.Event, e.Command.Name, outbox.CorrelationID(ctx))
	}

	// Outside a transactional handler nothing is recorded silently.
	err := outbox.Emit(context.Background(), CartCheckedOut{CartID: "c-8"})
	fmt.Println(errors.Is(err, outbox.ErrNoTransaction))
	// Output:
	// outbox_test.CartCheckedOut emitted by CheckOut, correlation req-42
	// true
}

func ExampleEncoder_Encode() {
	enc := outbox.NewEncoder(outbox.EncoderConfig{
		Topic: func(eventName string, _ any) string { return "shop." + eventName },
		Now:   func() time.Time { return time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC) },
	})
	rec, err := enc.Encode(outbox.Entry{
		Event:   CartCheckedOut{CartID: "c-7", Total: 1999},
		Command: outbox.Command{ID: "cmd-1", Name: "CheckOut", CorrelationID: "req-42"},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("topic:", rec.Topic)
	fmt.Println("partition key:", rec.PartitionKey)
	fmt.Println("payload:", string(rec.Message.Payload))
	fmt.Println("UUID version:", uuid.MustParse(rec.Message.UUID).Version())
	keys := make([]string, 0, len(rec.Message.Metadata))
	for k := range rec.Message.Metadata {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Printf("%s=%s\n", k, rec.Message.Metadata[k])
	}

	_, err = enc.Encode(outbox.Entry{Event: nil})
	fmt.Println(errors.Is(err, outbox.ErrNilEvent))
	// Output:
	// topic: shop.CartCheckedOut
	// partition key: cart-c-7
	// payload: {"cart_id":"c-7","total":1999}
	// UUID version: VERSION_7
	// causation_id=cmd-1
	// command=CheckOut
	// correlation_id=req-42
	// created_at=2025-01-02T03:04:05.000000006Z
	// name=CartCheckedOut
	// partition_key=cart-c-7
	// true
}

// Events that cannot become messages fail with a sentinel error callers can
// branch on.
func ExampleEncoder_EncodeAll() {
	type withFunc struct{ Callback func() }
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	_, err := enc.EncodeAll([]outbox.Entry{
		{Event: CartCheckedOut{CartID: "1"}},
		{Event: withFunc{Callback: func() {}}},
	})
	fmt.Println(err)
	fmt.Println(errors.Is(err, outbox.ErrMarshal))

	small := outbox.NewEncoder(outbox.EncoderConfig{MaxPayloadBytes: 16})
	_, err = small.Encode(outbox.Entry{Event: CartCheckedOut{CartID: "c-7"}})
	fmt.Println(err)
	fmt.Println(errors.Is(err, outbox.ErrPayloadTooLarge))
	// Output:
	// event 2 of 2: outbox: cannot marshal event outbox_test.withFunc: json: unsupported type: func()
	// true
	// outbox: payload too large: event outbox_test.CartCheckedOut is 27 bytes, limit is 16 (EncoderConfig.MaxPayloadBytes)
	// true
}
