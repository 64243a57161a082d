package redisstream_test

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
	"github.com/txoutbox/txoutbox/brokers/redisstream"
)

func ExampleNewPublisher() {
	ctx := context.Background()
	opts, err := redis.ParseURL(brokertest.RedisURL()) // redis://127.0.0.1:6379/0
	if err != nil {
		fmt.Println(err)
		return
	}
	cfg := redisstream.Config{Options: opts, ConsumerGroup: "orders-read-model"}
	pub, err := redisstream.NewPublisher(ctx, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pub.Close()
	topic := brokertest.RandomName("orders_")
	defer pub.DeleteTopic(ctx, topic) // the stream and its consumer groups

	// Publish returns once Redis added both entries, in one round trip.
	placed := message.NewMessage("0b6f3f6e-0000-4000-8000-000000000001", []byte(`{"id":1}`))
	placed.Metadata.Set("name", "OrderPlaced")
	paid := message.NewMessage("0b6f3f6e-0000-4000-8000-000000000002", []byte(`{"id":1}`))
	paid.Metadata.Set("name", "OrderPaid")
	if err := pub.Publish(topic, placed, paid); err != nil {
		fmt.Println(err)
		return
	}

	sub, err := redisstream.NewSubscriber(ctx, cfg)
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
