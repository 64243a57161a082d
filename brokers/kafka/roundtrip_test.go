package kafka_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
	"github.com/txoutbox/txoutbox/brokers/kafka"
	"github.com/txoutbox/txoutbox/outbox"
)

// TestRoundTrip publishes keyed and unkeyed messages in one Publish and
// checks that the subscriber receives each once with its UUID, metadata
// and payload, the keyed ones in order per key and with the partition key
// as the Kafka record key, the unkeyed ones with a nil key (spread over
// the partitions): once published before any subscriber exists
// (the group reads from the oldest offset), once with the subscriber
// already consuming.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name           string
		subscribeFirst bool
	}{
		{"publish first", false},
		{"subscribe first", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			brokers := brokertest.StartKafka(t).ListenAddrs()
			topic := brokertest.RandomName("roundtrip-")
			createTopic(t, brokers, topic, 4)
			cfg := kafka.Config{Brokers: brokers, ConsumerGroup: brokertest.RandomName("group-")}
			pub := newPublisher(t, cfg)

			msgs := make([]*message.Message, 0, 48)
			for i := range 48 {
				m := message.NewMessage(outbox.NewUUID(), fmt.Appendf(nil, `{"n":%d}`, i))
				m.Metadata.Set(outbox.MetadataName, "Placed")
				m.Metadata.Set("custom", fmt.Sprintf("value %d é", i))
				if i%2 == 0 { // every other one is unkeyed
					m.Metadata.Set(outbox.MetadataPartitionKey, fmt.Sprintf("key-%d", i%3))
				}
				msgs = append(msgs, m)
			}

			var c *consumer
			if tc.subscribeFirst {
				// The subscriber is consuming once it received a first
				// message published after it subscribed.
				c = consume(t, newSubscriber(t, cfg), topic)
				warmUp := message.NewMessage(outbox.NewUUID(), []byte("{}"))
				require.NoError(t, pub.Publish(topic, warmUp))
				eventually(t, 20*time.Second, 20*time.Millisecond, func() (bool, string) {
					return c.missing([]string{warmUp.UUID}) == 0, "the first message did not arrive"
				}, "subscriber not consuming")
			}
			require.NoError(t, pub.Publish(topic, msgs...))
			if !tc.subscribeFirst {
				c = consume(t, newSubscriber(t, cfg), topic)
			}
			uuids := make([]string, len(msgs))
			for i, m := range msgs {
				uuids[i] = m.UUID
			}
			eventually(t, 20*time.Second, 20*time.Millisecond, func() (bool, string) {
				n := c.missing(uuids)
				return n == 0, fmt.Sprintf("%d of %d messages not received", n, len(msgs))
			}, "messages not received")
			require.Zero(t, c.duplicates(), "duplicates")

			byUUID := map[string]receipt{}
			order := map[string][]string{} // key -> UUIDs in arrival order
			for _, r := range c.receipts() {
				if !slices.Contains(uuids, r.UUID) {
					continue // the warm-up message
				}
				byUUID[r.UUID] = r
				if k := r.Metadata.Get(outbox.MetadataPartitionKey); k != "" {
					order[k] = append(order[k], r.UUID)
				}
			}
			want := map[string][]string{}
			unkeyedPartitions := map[int32]bool{}
			for _, m := range msgs {
				r := byUUID[m.UUID]
				require.Equal(t, string(m.Payload), string(r.Payload), "payload of %s", m.UUID)
				require.Equal(t, m.Metadata, r.Metadata, "metadata of %s", m.UUID)
				key := m.Metadata.Get(outbox.MetadataPartitionKey)
				if key == "" {
					// A nil key, not an empty one: Sarama sends nil keys to
					// random partitions, an empty key to one partition.
					require.Nil(t, r.Key, "record key of unkeyed message %s", m.UUID)
					unkeyedPartitions[r.Partition] = true
					continue
				}
				require.Equal(t, key, string(r.Key), "record key of %s", m.UUID)
				want[key] = append(want[key], m.UUID)
			}
			require.Equal(t, want, order, "order per key")
			// 24 unkeyed messages all on one of 4 partitions by chance:
			// probability 4^-23.
			require.Greater(t, len(unkeyedPartitions), 1, "unkeyed messages all on one partition")
		})
	}
}
