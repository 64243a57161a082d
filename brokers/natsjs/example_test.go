package natsjs_test

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
	"github.com/txoutbox/txoutbox/brokers/natsjs"
)

func ExampleNewPublisher() {
	ctx := context.Background()
	cfg := natsjs.Config{
		URL:           brokertest.NATSURL(), // nats://127.0.0.1:4222
		ConsumerGroup: "orders-read-model",
	}
	pub, err := natsjs.NewPublisher(ctx, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pub.Close()
	topic := brokertest.RandomName("orders_")
	defer pub.DeleteTopic(ctx, topic) // the stream, and the subscriber's durable consumer

	// Publish returns once JetStream has stored both messages.
	placed := message.NewMessage("0b6f3f6e-0000-4000-8000-000000000001", []byte(`{"id":1}`))
	placed.Metadata.Set("name", "OrderPlaced")
	paid := message.NewMessage("0b6f3f6e-0000-4000-8000-000000000002", []byte(`{"id":1}`))
	paid.Metadata.Set("name", "OrderPaid")
	if err := pub.Publish(topic, placed, paid); err != nil {
		fmt.Println(err)
		return
	}

	sub, err := natsjs.NewSubscriber(ctx, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Close()
	msgs, err := sub.Subscribe(ctx, topic)
	if err != nil {
		fmt.Println(err)
		return
	}
	for range 2 {
		select {
		case msg := <-msgs:
			fmt.Println(msg.UUID, msg.Metadata.Get("name"), string(msg.Payload))
			msg.Ack()
		case <-time.After(10 * time.Second):
			fmt.Println("timeout")
			return
		}
	}
	// Output:
	// 0b6f3f6e-0000-4000-8000-000000000001 OrderPlaced {"id":1}
	// 0b6f3f6e-0000-4000-8000-000000000002 OrderPaid {"id":1}
}
