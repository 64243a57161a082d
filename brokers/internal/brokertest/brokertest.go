package brokertest

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
)

// AMQPURL is the RabbitMQ of the tests: TEST_AMQP_URL, or
// amqp://guest:guest@127.0.0.1:5672/.
func AMQPURL() string {
	return cmp.Or(os.Getenv("TEST_AMQP_URL"), "amqp://guest:guest@127.0.0.1:5672/")
}

// NATSURL is the NATS server (with JetStream) of the tests: TEST_NATS_URL,
// or nats://127.0.0.1:4222.
func NATSURL() string {
	return cmp.Or(os.Getenv("TEST_NATS_URL"), "nats://127.0.0.1:4222")
}

// RedisURL is the Redis of the tests: TEST_REDIS_URL, or
// redis://127.0.0.1:6379/0.
func RedisURL() string {
	return cmp.Or(os.Getenv("TEST_REDIS_URL"), "redis://127.0.0.1:6379/0")
}

// RandomName returns prefix followed by 12 random hexadecimal digits:
// a name no other test (or earlier run) uses, valid as a topic, stream,
// queue or consumer group name on every broker when prefix is.
func RandomName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// RandomTopic returns a random topic name, txoutbox_test_ and 12
// hexadecimal digits. Use [NewTopic] for one that is deleted when the
// test ends.
func RandomTopic() string {
	return RandomName("txoutbox_test_")
}

// NewTopic returns a [RandomTopic] that pub deletes when the test ends.
// Cleanups run last-registered first: call NewTopic after creating pub,
// so that the topic is deleted before pub closes.
func NewTopic(t testing.TB, pub interface {
	DeleteTopic(ctx context.Context, topic string) error
}) string {
	t.Helper()
	topic := RandomTopic()
	t.Cleanup(func() { require.NoError(t, pub.DeleteTopic(context.Background(), topic)) })
	return topic
}

// Subscribe subscribes sub to topic for the test's duration and closes
// sub when the test ends.
func Subscribe(t testing.TB, sub message.Subscriber, topic string) <-chan *message.Message {
	t.Helper()
	t.Cleanup(func() { require.NoError(t, sub.Close()) })
	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)
	return ch
}

// KeyedMessages returns n messages with new UUIDs, spread round-robin
// over keys partition keys (k0, k1, ...). Message i has the payload
// {"seq":i} and the metadata partition_key, name (OrderPlaced) and seq
// (i).
func KeyedMessages(n, keys int) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), fmt.Appendf(nil, `{"seq":%d}`, i))
		msgs[i].Metadata.Set("partition_key", fmt.Sprintf("k%d", i%keys))
		msgs[i].Metadata.Set("name", "OrderPlaced")
		msgs[i].Metadata.Set("seq", strconv.Itoa(i))
	}
	return msgs
}

// ReceiveTimeout is how long [Receive] waits for all its messages.
const ReceiveTimeout = 30 * time.Second

// Receive reads n messages from ch, acking each, and returns them in the
// order received. It fails if ch closes first or the n messages take
// longer than [ReceiveTimeout].
func Receive(t testing.TB, ch <-chan *message.Message, n int) []*message.Message {
	t.Helper()
	var got []*message.Message
	timeout := time.After(ReceiveTimeout)
	for len(got) < n {
		select {
		case m, ok := <-ch:
			require.True(t, ok, "subscription closed after %d of %d messages", len(got), n)
			got = append(got, m)
			m.Ack()
		case <-timeout:
			require.FailNow(t, "timeout", "received %d of %d messages", len(got), n)
		}
	}
	return got
}

// RequireNoMore fails if ch delivers a message within d.
func RequireNoMore(t testing.TB, ch <-chan *message.Message, d time.Duration) {
	t.Helper()
	select {
	case m := <-ch:
		require.FailNow(t, "unexpected message", "%s %s", m.UUID, m.Payload)
	case <-time.After(d):
	}
}

// RequireSame checks that got is want: same messages, same order, UUID,
// payload and metadata intact.
func RequireSame(t testing.TB, want, got []*message.Message) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		require.Equal(t, want[i].UUID, got[i].UUID, "message %d", i)
		require.Equal(t, string(want[i].Payload), string(got[i].Payload), "message %d", i)
		require.Equal(t, want[i].Metadata, got[i].Metadata, "message %d", i)
	}
}

// RequireKeyOrder checks that got holds want's messages, each once, with
// their payload and partition key, and in want's order per partition
// key. Messages of different keys may arrive interleaved in any way.
func RequireKeyOrder(t testing.TB, want, got []*message.Message) {
	t.Helper()
	require.Len(t, got, len(want))
	pos := map[string]int{}
	for i, m := range want {
		pos[m.UUID] = i
	}
	last := map[string]int{}
	for _, m := range got {
		i, ok := pos[m.UUID]
		require.True(t, ok, "unknown message %s", m.UUID)
		delete(pos, m.UUID)
		key := m.Metadata.Get("partition_key")
		require.Equal(t, want[i].Metadata.Get("partition_key"), key)
		require.Equal(t, string(want[i].Payload), string(m.Payload))
		if prev, ok := last[key]; ok {
			require.Less(t, prev, i, "key %s out of order", key)
		}
		last[key] = i
	}
}
