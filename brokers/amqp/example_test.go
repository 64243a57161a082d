package amqp_test

import (
	"context"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/brokers/amqp"
)

// The publisher declares the topic's queue, publishes with confirms, and
// fails instead of dropping what RabbitMQ cannot route.
func ExampleNewPublisher() {
	ctx := context.Background()
	pub, err := amqp.NewPublisher(ctx, amqp.Config{URL: amqpURL()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pub.Close()
	defer pub.DeleteTopic(ctx, "txoutbox_example_orders")

	msg := message.NewMessage("0190b6a4-0000-7000-8000-000000000001", []byte(`{"order_id":"o-1"}`))
	if err := pub.Publish("txoutbox_example_orders", msg); err != nil {
		fmt.Println(err)
		return
	}

	sub, err := amqp.NewSubscriber(ctx, amqp.Config{URL: amqpURL()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Close()
	ch, err := sub.Subscribe(ctx, "txoutbox_example_orders")
	if err != nil {
		fmt.Println(err)
		return
	}
	got := <-ch
	got.Ack()
	fmt.Println(got.UUID, string(got.Payload))
	// Output: 0190b6a4-0000-7000-8000-000000000001 {"order_id":"o-1"}
}
