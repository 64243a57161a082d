package kafka_test

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/txoutbox/txoutbox/brokers/kafka"
	"github.com/txoutbox/txoutbox/outbox"
)

// ExampleNewPublisher publishes a keyed message and reads it back in a
// consumer group. In an application the publisher goes to
// outbox.NewForwarder, which calls Publish with whole batches.
func ExampleNewPublisher() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// An in-process Kafka for the example; give your brokers instead.
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "orders"))
	if err != nil {
		panic(err)
	}
	defer cluster.Close()
	cfg := kafka.Config{Brokers: cluster.ListenAddrs(), ConsumerGroup: "orders-read-model"}

	pub, err := kafka.NewPublisher(ctx, cfg)
	if err != nil {
		panic(err)
	}
	defer pub.Close()
	msg := message.NewMessage("0190f5a2-7c3e-7b1a-9c1d-2f4e6a8b0c1d", []byte(`{"order":"o-1"}`))
	msg.Metadata.Set(outbox.MetadataName, "OrderPlaced")
	msg.Metadata.Set(outbox.MetadataPartitionKey, "o-1") // the Kafka record key
	if err := pub.Publish("orders", msg); err != nil {
		panic(err)
	}
	fmt.Println("published")

	// The group reads from the oldest offset the first time, so it gets
	// what was published before it joined.
	sub, err := kafka.NewSubscriber(ctx, cfg)
	if err != nil {
		panic(err)
	}
	defer sub.Close()
	msgs, err := sub.Subscribe(ctx, "orders")
	if err != nil {
		panic(err)
	}
	select {
	case got := <-msgs:
		got.Ack()
		fmt.Println(got.UUID, got.Metadata.Get(outbox.MetadataName), got.Metadata.Get(outbox.MetadataPartitionKey), string(got.Payload))
	case <-ctx.Done():
		fmt.Println("nothing received")
	}
	// Output:
	// published
	// 0190f5a2-7c3e-7b1a-9c1d-2f4e6a8b0c1d OrderPlaced o-1 {"order":"o-1"}
}
