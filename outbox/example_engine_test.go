package outbox_test

import (
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/outbox"
)

// brokerRejecting is a publisher that prints what it publishes and rejects
// the message with the UUID poison.
type brokerRejecting struct{ poison string }

func (b brokerRejecting) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if m.UUID == b.poison {
			return errors.New("message too large")
		}
	}
	for _, m := range msgs {
		fmt.Printf("published %s to %s\n", m.UUID, topic)
	}
	return nil
}

func (brokerRejecting) Close() error { return nil }

// A relay that holds its rows itself, rather than claiming them from a
// RelayStore, publishes them through an Engine and records the outcome:
// Delivered as delivered, Failures as retries or parked rows; the other
// rows (here m-4, behind its key's failed row) come again later.
func ExampleNewEngine() {
	eng, err := outbox.NewEngine(brokerRejecting{poison: "m-2"}, outbox.ForwarderConfig{MaxAttempts: 3})
	if err != nil {
		fmt.Println(err)
		return
	}
	out := eng.Publish([]outbox.Row{
		{ID: 1, UUID: "m-1", Topic: "carts", PartitionKey: "cart-7", Payload: []byte(`{}`)},
		{ID: 2, UUID: "m-2", Topic: "carts", PartitionKey: "cart-8", Payload: []byte(`{}`), Attempts: 2},
		{ID: 3, UUID: "m-3", Topic: "carts", PartitionKey: "cart-7", Payload: []byte(`{}`)},
		{ID: 4, UUID: "m-4", Topic: "carts", PartitionKey: "cart-8", Payload: []byte(`{}`)},
		{ID: 5, Topic: "carts", Payload: []byte(`{}`)}, // no UUID: cannot be a message
	})
	fmt.Println("delivered:", out.Delivered)
	for _, fl := range out.Failures {
		fmt.Printf("failed: row %d, park %v: %s\n", fl.ID, fl.Park, fl.Error)
	}
	fmt.Println("outage:", out.Outage)
	// Output:
	// published m-1 to carts
	// published m-3 to carts
	// delivered: [1 3]
	// failed: row 5, park true: undecodable row: empty message UUID
	// failed: row 2, park true: parked after 3 attempts: message too large
	// outage: false
}
