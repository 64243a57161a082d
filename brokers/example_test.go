package brokers_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/brokers"
)

// Open picks the broker by URL; the empty URL is the in-process
// GoChannel. With amqp://, nats://, redis:// or kafka:// the same code
// publishes to that broker, and Open returns also while it is down.
func ExampleOpen() {
	ctx := context.Background()
	b, err := brokers.Open(ctx, "", brokers.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Println(err) // only a malformed URL or invalid options
		return
	}
	defer b.Close()
	fmt.Println(b, "healthy:", b.Health(ctx) == nil)

	ch, err := b.Subscriber.Subscribe(ctx, "orders")
	if err != nil {
		fmt.Println(err)
		return
	}
	go func() {
		// The forwarder would do this: outbox.NewForwarder(store, b.Publisher, ...).
		_ = b.Publisher.Publish("orders", message.NewMessage("0190b6a4-0000-7000-8000-000000000001", []byte(`{"order_id":"o-1"}`)))
	}()
	msg := <-ch
	msg.Ack()
	fmt.Println(msg.UUID, string(msg.Payload))
	// Output:
	// gochannel (in-process) healthy: true
	// 0190b6a4-0000-7000-8000-000000000001 {"order_id":"o-1"}
}
