package broker

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/outbox"
)

// The brokers the tests use, on this machine; `make test` starts them
// (scripts/ensure-services.sh rabbitmq nats redis).
func testURL(kind Kind) string {
	switch kind {
	case AMQP:
		return cmp.Or(os.Getenv("TEST_AMQP_URL"), "amqp://guest:guest@127.0.0.1:5672/")
	case NATS:
		return cmp.Or(os.Getenv("TEST_NATS_URL"), "nats://127.0.0.1:4222")
	case Redis:
		return cmp.Or(os.Getenv("TEST_REDIS_URL"), "redis://127.0.0.1:6379/0")
	}
	return ""
}

func randomName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// TestRoundTrip publishes keyed messages through each real broker and
// receives them, in order per key, with UUID and metadata intact. The
// messages are published before anyone subscribes (except on GoChannel,
// which keeps nothing): the broker must keep them for the consumer group.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for _, kind := range []Kind{GoChannel, AMQP, NATS, Redis} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			cfg, err := ParseURL(testURL(kind))
			require.NoError(t, err)
			b, err := Open(ctx, cfg, Options{ConsumerGroup: randomName("test-")})
			require.NoError(t, err, "%s must run on this machine: run `make test`, or scripts/ensure-services.sh rabbitmq nats redis", cfg)
			defer func() {
				require.NoError(t, b.Close())
				require.NoError(t, b.Close(), "Close twice")
			}()
			topic := randomName("txoutbox-test-")
			defer func() { require.NoError(t, b.DeleteTopic(context.Background(), topic)) }()

			const perKey = 10
			var sent []*message.Message
			for i := range perKey {
				for _, key := range []string{"a", "b"} {
					m := message.NewMessage(outbox.NewUUID(), fmt.Appendf(nil, `{"key":%q,"seq":%d}`, key, i))
					m.Metadata.Set(outbox.MetadataPartitionKey, key)
					m.Metadata.Set("seq", fmt.Sprint(i))
					sent = append(sent, m)
				}
			}
			var msgs <-chan *message.Message
			subscribe := func() {
				msgs, err = b.Subscriber.Subscribe(ctx, topic)
				require.NoError(t, err)
			}
			if kind == GoChannel {
				subscribe()
				go func() { // GoChannel blocks Publish until the ack
					if err := b.Publisher.Publish(topic, sent...); err != nil {
						t.Errorf("publish: %v", err)
					}
				}()
			} else {
				require.NoError(t, b.Publisher.Publish(topic, sent...))
				subscribe()
			}

			next := map[string]int{}
			byUUID := map[string]*message.Message{}
			for _, m := range sent {
				byUUID[m.UUID] = m
			}
			for range sent {
				select {
				case m := <-msgs:
					want, ok := byUUID[m.UUID]
					require.True(t, ok, "unknown or duplicate message %s", m.UUID)
					delete(byUUID, m.UUID)
					require.Equal(t, string(want.Payload), string(m.Payload))
					key := m.Metadata.Get(outbox.MetadataPartitionKey)
					require.Equal(t, fmt.Sprint(next[key]), m.Metadata.Get("seq"), "order of key %s", key)
					next[key]++
					m.Ack()
				case <-ctx.Done():
					t.Fatalf("received %d of %d messages", len(sent)-len(byUUID), len(sent))
				}
			}
		})
	}
}

// A broker that is not there fails Open fast, with ErrUnreachable.
func TestOpenUnreachable(t *testing.T) {
	t.Parallel()
	for _, url := range []string{
		"amqp://guest:guest@127.0.0.1:1/",
		"nats://127.0.0.1:1",
		"redis://127.0.0.1:1/0",
		"kafka://127.0.0.1:1",
	} {
		t.Run(url, func(t *testing.T) {
			t.Parallel()
			cfg, err := ParseURL(url)
			require.NoError(t, err)
			start := time.Now()
			_, err = Open(t.Context(), cfg, Options{ConsumerGroup: "g", ConnectTimeout: 2 * time.Second})
			require.ErrorIs(t, err, ErrUnreachable)
			require.ErrorContains(t, err, "127.0.0.1:1")
			require.Less(t, time.Since(start), 5*time.Second)
		})
	}
}

func TestOpenNeedsAConsumerGroup(t *testing.T) {
	t.Parallel()
	cfg, err := ParseURL("nats://127.0.0.1:1")
	require.NoError(t, err)
	_, err = Open(t.Context(), cfg, Options{})
	require.ErrorContains(t, err, "ConsumerGroup is required")
	_, err = Open(t.Context(), cfg, Options{ConsumerGroup: "a.b"})
	require.ErrorContains(t, err, "only letters")
}

// There is no Kafka broker here: the Kafka message mapping and client
// settings are checked without one.
func TestKafkaSettings(t *testing.T) {
	t.Parallel()
	m := message.NewMessage(outbox.NewUUID(), []byte(`{}`))
	m.Metadata.Set(outbox.MetadataPartitionKey, "order-7")
	pm, err := kafkaMarshaler.Marshal("orders", m)
	require.NoError(t, err)
	require.Equal(t, "orders", pm.Topic)
	key, err := pm.Key.Encode()
	require.NoError(t, err)
	require.Equal(t, "order-7", string(key), "the Kafka key is the partition key")

	back, err := kafkaMarshaler.Unmarshal(&sarama.ConsumerMessage{Value: mustEncode(t, pm.Value), Headers: headers(pm)})
	require.NoError(t, err)
	require.Equal(t, m.UUID, back.UUID)
	require.Equal(t, "order-7", back.Metadata.Get(outbox.MetadataPartitionKey))

	pub, sub := kafkaConfigs(3 * time.Second)
	require.Equal(t, sarama.WaitForAll, pub.Producer.RequiredAcks, "confirmed means on every in-sync replica")
	require.True(t, pub.Producer.Return.Successes, "a sync producer")
	require.Equal(t, sarama.OffsetOldest, sub.Consumer.Offsets.Initial, "a new group reads what was published before it")
	require.Equal(t, 3*time.Second, pub.Net.DialTimeout)
	require.NoError(t, pub.Validate())
	require.NoError(t, sub.Validate())
}

func mustEncode(t *testing.T, e sarama.Encoder) []byte {
	t.Helper()
	b, err := e.Encode()
	require.NoError(t, err)
	return b
}

func headers(pm *sarama.ProducerMessage) []*sarama.RecordHeader {
	out := make([]*sarama.RecordHeader, len(pm.Headers))
	for i := range pm.Headers {
		out[i] = &pm.Headers[i]
	}
	return out
}
