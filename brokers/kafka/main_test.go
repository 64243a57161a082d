package kafka_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/rcrowley/go-metrics"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/kafka"
	"github.com/txoutbox/txoutbox/internal/leak"
)

// TestMain turns off Sarama's go-metrics before any client exists (its
// meters start a goroutine that never ends) and fails the tests when a
// goroutine they started is still running after them.
func TestMain(m *testing.M) {
	metrics.UseNilMetrics = true
	leak.VerifyTestMain(m)
}

// clusterAdmin connects a Sarama cluster admin to brokers; the caller
// closes it.
func clusterAdmin(t *testing.T, brokers []string) sarama.ClusterAdmin {
	t.Helper()
	conf := sarama.NewConfig()
	conf.Version = sarama.V2_3_0_0
	admin, err := sarama.NewClusterAdmin(brokers, conf)
	require.NoError(t, err)
	return admin
}

// createTopic creates topic with the given number of partitions.
func createTopic(t *testing.T, brokers []string, topic string, partitions int32) {
	t.Helper()
	admin := clusterAdmin(t, brokers)
	defer admin.Close()
	require.NoError(t, admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1}, false))
}

func newPublisher(t *testing.T, cfg kafka.Config) *kafka.Publisher {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pub, err := kafka.NewPublisher(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, pub.Close()) })
	return pub
}

// sessionTimeout shortens the subscriber's consumer group session from
// Sarama's 10s to kfake's minimum, so that a member lost in a cluster
// restart is given up sooner.
func sessionTimeout(p kafka.SaramaParams) {
	if p.Subscriber {
		p.Config.Consumer.Group.Session.Timeout = 6 * time.Second
		p.Config.Consumer.Group.Heartbeat.Interval = time.Second
	}
}

// receipt is one message a consumer received.
type receipt struct {
	UUID      string
	Metadata  message.Metadata
	Payload   []byte
	Partition int32
	Key       []byte
}

// consumer records every message of a topic that a subscriber delivers,
// acking each.
type consumer struct {
	mu       sync.Mutex
	all      []receipt
	received map[string]int // by UUID
}

// consume subscribes sub to topic and records what it delivers until t
// ends.
func consume(t *testing.T, sub message.Subscriber, topic string) *consumer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := sub.Subscribe(ctx, topic)
	require.NoError(t, err)
	c := &consumer{received: map[string]int{}}
	var done sync.WaitGroup
	done.Go(func() {
		for msg := range ch {
			partition, _ := wkafka.MessagePartitionFromCtx(msg.Context())
			key, _ := wkafka.MessageKeyFromCtx(msg.Context())
			c.mu.Lock()
			c.all = append(c.all, receipt{UUID: msg.UUID, Metadata: msg.Metadata, Payload: msg.Payload, Partition: partition, Key: key})
			c.received[msg.UUID]++
			c.mu.Unlock()
			msg.Ack()
		}
	})
	t.Cleanup(func() { cancel(); _ = sub.Close(); done.Wait() })
	return c
}

// receipts returns a copy of what was received, in order.
func (c *consumer) receipts() []receipt {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]receipt(nil), c.all...)
}

// missing returns how many of uuids were not received.
func (c *consumer) missing(uuids []string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, u := range uuids {
		if c.received[u] == 0 {
			n++
		}
	}
	return n
}

// duplicates returns how many messages were received more than once, and
// how many extra copies there were.
func (c *consumer) duplicates() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.received {
		n += k - 1
	}
	return n
}

// duplicatesOf returns how many extra copies of uuids were received.
func (c *consumer) duplicatesOf(uuids []string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, u := range uuids {
		n += max(c.received[u]-1, 0)
	}
	return n
}

func newSubscriber(t *testing.T, cfg kafka.Config) message.Subscriber {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := kafka.NewSubscriber(ctx, cfg)
	require.NoError(t, err)
	return sub
}

// eventually polls cond every interval until it holds, failing t with
// cond's last description after timeout.
func eventually(t *testing.T, timeout, interval time.Duration, cond func() (bool, string), msg string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after %v: %s", msg, timeout, desc)
		}
		time.Sleep(interval)
	}
}
