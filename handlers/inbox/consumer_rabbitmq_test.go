package inbox_test

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/amqp"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
)

// On one RabbitMQ queue, 4 workers keep each of 50 keys in order while
// handlers take random time and some fail once; every message is applied
// once.
func TestConsumerKeyOrderOnRabbitMQ(t *testing.T) {
	t.Parallel()
	const (
		n    = 2000
		keys = 50
	)
	f := newFixture(t, testdb.Postgres, inbox.Config{})
	url := cmp.Or(os.Getenv("TEST_AMQP_URL"), "amqp://guest:guest@127.0.0.1:5672/")
	cfg := amqp.Config{URL: url, Prefetch: 200, Concurrent: true}
	ctx := context.Background()
	pub, err := amqp.NewPublisher(ctx, cfg)
	require.NoError(t, err, "RabbitMQ must run at %s (scripts/ensure-services.sh rabbitmq)", url)
	topic := fmt.Sprintf("txoutbox_test_%012x", rand.Uint64()>>16)
	t.Cleanup(func() {
		require.NoError(t, pub.DeleteTopic(context.Background(), topic))
		require.NoError(t, pub.Close())
	})
	sub, err := amqp.NewSubscriber(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, sub.Close()) })

	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), nil)
		msgs[i].Metadata.Set(outbox.MetadataPartitionKey, fmt.Sprintf("k%d", i%keys))
		msgs[i].Metadata.Set("seq", strconv.Itoa(i))
	}
	require.NoError(t, pub.Publish(topic, msgs...)) // a backlog, in order

	require.NoError(t, f.db.Exec("CREATE TABLE applied (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, seq INTEGER NOT NULL)").Error)
	var (
		failed  sync.Map
		running atomic.Int64
		maxRun  atomic.Int64
	)
	handler := func(msg *message.Message) error {
		now := running.Add(1)
		defer running.Add(-1)
		for old := maxRun.Load(); now > old && !maxRun.CompareAndSwap(old, now); old = maxRun.Load() {
		}
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
		if rand.IntN(50) == 0 {
			if _, again := failed.LoadOrStore(msg.UUID, true); !again {
				return fmt.Errorf("transient failure of %s", msg.UUID)
			}
		}
		if err := effectHandler(msg); err != nil {
			return err
		}
		// The order of application is the order of the committed rows
		// (a handler may run again when another one of its batch fails).
		tx, err := outbox.Tx(msg.Context())
		if err != nil {
			return err
		}
		seq, _ := strconv.Atoi(msg.Metadata.Get("seq"))
		return tx.Exec("INSERT INTO applied (key, seq) VALUES (?, ?)", msg.Metadata.Get(outbox.MetadataPartitionKey), seq).Error
	}
	c, err := f.in.NewConsumer(inbox.ConsumerConfig{
		Name: consumerName, Topics: []string{topic}, Subscriber: sub, Handler: handler,
		Workers: 4, BatchSize: 50, RetryBackoff: time.Millisecond,
	})
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	require.Eventually(t, func() bool { return c.Stats().Processed == n }, 60*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)

	require.EqualValues(t, n, testdb.Count(t, f.db, "effects", ""))
	require.EqualValues(t, n, testdb.Count(t, f.db, "(SELECT DISTINCT message_uuid FROM effects) d", ""), "each message once")
	var rows []struct {
		Key string
		Seq int
	}
	require.NoError(t, f.db.Raw("SELECT key, seq FROM applied ORDER BY id").Scan(&rows).Error)
	applied := map[string][]int{}
	for _, r := range rows {
		applied[r.Key] = append(applied[r.Key], r.Seq)
	}
	require.Len(t, applied, keys)
	for key, seqs := range applied {
		for i := 1; i < len(seqs); i++ {
			require.Less(t, seqs[i-1], seqs[i], "key %s applied out of order: %v", key, seqs)
		}
	}
	require.Greater(t, maxRun.Load(), int64(1), "keys ran in parallel")
	require.Zero(t, c.Stats().Parked)
	require.Positive(t, c.Stats().Failures)
}
