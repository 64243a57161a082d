package amqp_test

import (
	"context"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/brokers/amqp"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
)

// The publisher declares the topic's queue, publishes with confirms, and
// fails instead of dropping what RabbitMQ cannot route.
func ExampleNewPublisher() {
	ctx := context.Background()
	pub, err := amqp.NewPublisher(ctx, amqp.Config{URL: brokertest.AMQPURL()})
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

	sub, err := amqp.NewSubscriber(ctx, amqp.Config{URL: brokertest.AMQPURL()})
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

// A subscription hands messages over one at a time; with Prefetch 1 (the
// default) a nacked message comes again before the ones behind it.
func ExampleSubscriber_Subscribe() {
	ctx := context.Background()
	const topic = "txoutbox_example_nack"
	pub, err := amqp.NewPublisher(ctx, amqp.Config{URL: brokertest.AMQPURL()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pub.Close()
	_ = pub.DeleteTopic(ctx, topic)
	defer pub.DeleteTopic(ctx, topic)

	sub, err := amqp.NewSubscriber(ctx, amqp.Config{URL: brokertest.AMQPURL()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Close()
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		fmt.Println(err)
		return
	}
	err = pub.Publish(topic,
		message.NewMessage("0190b6a4-0000-7000-8000-00000000000a", []byte(`{"order_id":"o-1"}`)),
		message.NewMessage("0190b6a4-0000-7000-8000-00000000000b", []byte(`{"order_id":"o-2"}`)))
	if err != nil {
		fmt.Println(err)
		return
	}
	m := <-ch
	fmt.Println(m.UUID, "nacked")
	m.Nack()
	for range 2 {
		m = <-ch
		fmt.Println(m.UUID, "acked")
		m.Ack()
	}
	// Output:
	// 0190b6a4-0000-7000-8000-00000000000a nacked
	// 0190b6a4-0000-7000-8000-00000000000a acked
	// 0190b6a4-0000-7000-8000-00000000000b acked
}
