package gormstore_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// subscriberFixture is an outbox table with a publisher.
type subscriberFixture struct {
	db    *gorm.DB
	store *gormstore.Store
	pub   *gormstore.Publisher
}

func newSubscriberFixture(t *testing.T, d testdb.Dialect, cfg gormstore.Config) subscriberFixture {
	t.Helper()
	db := testdb.Open(t, d)
	store, err := gormstore.New(db, cfg)
	require.NoError(t, err)
	require.NoError(t, store.Migrate(context.Background()))
	pub, err := gormstore.NewPublisher(store)
	require.NoError(t, err)
	return subscriberFixture{db: db, store: store, pub: pub}
}

func (f subscriberFixture) newSubscriber(t *testing.T, cfg gormstore.SubscriberConfig) *gormstore.Subscriber {
	t.Helper()
	sub, err := gormstore.NewSubscriber(f.store, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, sub.Close()) })
	return sub
}

// keyedMessage returns a message with a partition key and its sequence
// number as payload.
func keyedMessage(key string, seq int) *message.Message {
	m := message.NewMessage(outbox.NewUUID(), []byte(fmt.Sprint(seq)))
	if key != "" {
		m.Metadata.Set(outbox.MetadataPartitionKey, key)
	}
	return m
}

// receive reads one message or fails after timeout.
func receive(t *testing.T, ch <-chan *message.Message, timeout time.Duration) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		require.True(t, ok, "channel closed")
		return m
	case <-time.After(timeout):
		t.Fatalf("no message within %v", timeout)
		return nil
	}
}

// TestSubscriberOrderPerKey runs three subscribers (other processes, as
// far as the table knows) on one topic: every message is delivered exactly
// once (no nacks, no crash), and each key's messages in publish order.
func TestSubscriberOrderPerKey(t *testing.T) {
	t.Parallel()
	f := newSubscriberFixture(t, testdb.Postgres, gormstore.Config{})
	const keys, perKey = 6, 50
	var msgs []*message.Message
	for i := range perKey {
		for k := range keys {
			msgs = append(msgs, keyedMessage(fmt.Sprintf("k%d", k), i))
		}
	}
	// Published in several transactions, as commands would.
	for start := 0; start < len(msgs); start += 25 {
		require.NoError(t, f.pub.Publish("orders", msgs[start:start+25]...))
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	got := map[string][]int{}
	seen := map[string]bool{}
	var dups []string
	total := 0
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		sub := f.newSubscriber(t, gormstore.SubscriberConfig{BatchSize: 7})
		ch, err := sub.Subscribe(ctx, "orders")
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range ch {
				key := m.Metadata.Get(outbox.MetadataPartitionKey)
				var seq int
				_, _ = fmt.Sscan(string(m.Payload), &seq)
				mu.Lock()
				if seen[m.UUID] {
					dups = append(dups, m.UUID)
				}
				seen[m.UUID] = true
				got[key] = append(got[key], seq)
				total++
				last := total == len(msgs)
				mu.Unlock()
				m.Ack()
				if last {
					close(done)
				}
			}
		}()
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		mu.Lock()
		t.Fatalf("received %d of %d", total, len(msgs))
	}
	cancel()
	wg.Wait()
	require.Empty(t, dups, "messages delivered twice")
	for k := range keys {
		seqs := got[fmt.Sprintf("k%d", k)]
		require.Len(t, seqs, perKey)
		for i, s := range seqs {
			require.Equal(t, i, s, "key k%d out of order: %v", k, seqs)
		}
	}
	require.Eventually(t, func() bool {
		return testdb.Count(t, f.db, "txoutbox_outbox", "") == 0
	}, 10*time.Second, 20*time.Millisecond, "acked rows are deleted")
}

// TestSubscriberNack: a nacked message is charged an attempt and comes
// again before the messages after it; its context ends at the Nack.
func TestSubscriberNack(t *testing.T) {
	t.Parallel()
	f := newSubscriberFixture(t, testdb.Postgres, gormstore.Config{KeepDelivered: true})
	first, second := keyedMessage("", 1), keyedMessage("", 2)
	require.NoError(t, f.pub.Publish("t", first, second))
	sub := f.newSubscriber(t, gormstore.SubscriberConfig{})
	ch, err := sub.Subscribe(context.Background(), "t")
	require.NoError(t, err)

	m := receive(t, ch, 10*time.Second)
	require.Equal(t, first.UUID, m.UUID)
	m.Nack()
	select {
	case <-m.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("context of a nacked message not canceled")
	}
	for _, want := range []string{first.UUID, second.UUID} {
		m := receive(t, ch, 10*time.Second)
		require.Equal(t, want, m.UUID)
		m.Ack()
	}
	require.Eventually(t, func() bool {
		return testdb.Count(t, f.db, "txoutbox_outbox", "delivered_at IS NOT NULL") == 2
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, int64(1), testdb.Count(t, f.db, "txoutbox_outbox",
		"uuid = ? AND attempts = 1 AND last_error = 'nacked by subscriber'", first.UUID))
	require.Equal(t, int64(1), testdb.Count(t, f.db, "txoutbox_outbox", "uuid = ? AND attempts = 0", second.UUID))
}

// TestSubscriberCloseReleases: Close ends the subscription with a message
// in flight, cancels its context and closes the channel; the message is
// delivered again to the next subscriber, and Subscribe after Close fails.
func TestSubscriberCloseReleases(t *testing.T) {
	t.Parallel()
	f := newSubscriberFixture(t, testdb.Postgres, gormstore.Config{})
	msg := keyedMessage("k", 1)
	require.NoError(t, f.pub.Publish("t", msg, keyedMessage("k", 2)))

	sub, err := gormstore.NewSubscriber(f.store, gormstore.SubscriberConfig{})
	require.NoError(t, err)
	ch, err := sub.Subscribe(context.Background(), "t")
	require.NoError(t, err)
	m := receive(t, ch, 10*time.Second)
	require.Equal(t, msg.UUID, m.UUID)
	require.NoError(t, sub.Close())
	require.NoError(t, sub.Close(), "Close twice")
	_, open := <-ch
	require.False(t, open, "channel closed by Close")
	require.Error(t, m.Context().Err(), "context of the message in flight canceled")
	_, err = sub.Subscribe(context.Background(), "t")
	require.ErrorIs(t, err, gormstore.ErrSubscriberClosed)

	// The unacked message comes again, first.
	ch = mustSubscribe(t, f.newSubscriber(t, gormstore.SubscriberConfig{}), context.Background(), "t")
	m = receive(t, ch, 10*time.Second)
	require.Equal(t, msg.UUID, m.UUID)
	m.Ack()
}

func mustSubscribe(t *testing.T, sub *gormstore.Subscriber, ctx context.Context, topic string) <-chan *message.Message {
	t.Helper()
	ch, err := sub.Subscribe(ctx, topic)
	require.NoError(t, err)
	return ch
}

// TestSubscriberContextEnds: the channel closes when the Subscribe
// context ends, and the message in flight is given back.
func TestSubscriberContextEnds(t *testing.T) {
	t.Parallel()
	f := newSubscriberFixture(t, testdb.Postgres, gormstore.Config{})
	msg := keyedMessage("", 1)
	require.NoError(t, f.pub.Publish("t", msg))
	sub := f.newSubscriber(t, gormstore.SubscriberConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	ch := mustSubscribe(t, sub, ctx, "t")
	m := receive(t, ch, 10*time.Second)
	cancel()
	for range ch {
		// Drain until closed.
	}
	require.Error(t, m.Context().Err())
	m = receive(t, mustSubscribe(t, sub, context.Background(), "t"), 10*time.Second)
	require.Equal(t, msg.UUID, m.UUID)
	m.Ack()
}

// TestSubscriberAckAsContextEnds: a message acked just as the Subscribe
// context ends counts as delivered: its row is deleted, not redelivered.
func TestSubscriberAckAsContextEnds(t *testing.T) {
	t.Parallel()
	f := newSubscriberFixture(t, testdb.Postgres, gormstore.Config{})
	sub := f.newSubscriber(t, gormstore.SubscriberConfig{})
	for i := range 10 { // both ready at once: a random pick would lose about half
		require.NoError(t, f.pub.Publish("t", keyedMessage("", i)))
		ctx, cancel := context.WithCancel(context.Background())
		ch := mustSubscribe(t, sub, ctx, "t")
		m := receive(t, ch, 10*time.Second)
		m.Ack()
		cancel()
		for range ch {
			// Drain until closed: the batch is finished by then.
		}
		require.Zero(t, testdb.Count(t, f.db, "txoutbox_outbox", ""), "round %d: the acked row was not deleted", i)
	}
}

// TestSubscriberWakesOnNotify: with LISTEN (the default) a message
// committed while the subscription waits arrives long before the poll.
func TestSubscriberWakesOnNotify(t *testing.T) {
	t.Parallel()
	f := newSubscriberFixture(t, testdb.Postgres, gormstore.Config{})
	sub := f.newSubscriber(t, gormstore.SubscriberConfig{PollInterval: time.Hour})
	ch := mustSubscribe(t, sub, context.Background(), "t")
	time.Sleep(300 * time.Millisecond) // the first claim found nothing; LISTEN is on
	msg := keyedMessage("", 1)
	require.NoError(t, f.pub.Publish("t", msg))
	m := receive(t, ch, 10*time.Second)
	require.Equal(t, msg.UUID, m.UUID)
	m.Ack()
}

// TestSubscriberTopics: a subscription gets its topic only.
func TestSubscriberTopics(t *testing.T) {
	t.Parallel()
	f := newSubscriberFixture(t, testdb.Postgres, gormstore.Config{})
	a, b := keyedMessage("k", 1), keyedMessage("k", 2)
	require.NoError(t, f.pub.Publish("a", a))
	require.NoError(t, f.pub.Publish("b", b))
	sub := f.newSubscriber(t, gormstore.SubscriberConfig{})
	mb := receive(t, mustSubscribe(t, sub, context.Background(), "b"), 10*time.Second)
	require.Equal(t, b.UUID, mb.UUID, "topic b is not held up by the key's earlier row on topic a")
	mb.Ack()
	ma := receive(t, mustSubscribe(t, sub, context.Background(), "a"), 10*time.Second)
	require.Equal(t, a.UUID, ma.UUID)
	ma.Ack()
}

// TestSubscriberParksUndecodable: a row whose metadata is not a JSON
// object of strings is parked; its key's later rows wait behind it, other
// keys go on.
func TestSubscriberParksUndecodable(t *testing.T) {
	t.Parallel()
	f := newSubscriberFixture(t, testdb.Postgres, gormstore.Config{})
	require.NoError(t, f.db.Exec(`INSERT INTO txoutbox_outbox (uuid, topic, partition_key, payload, metadata)
		VALUES ('bad', 't', 'k', 'x', '{"n": 1}')`).Error)
	behind, other := keyedMessage("k", 2), keyedMessage("other", 3)
	require.NoError(t, f.pub.Publish("t", behind, other))
	sub := f.newSubscriber(t, gormstore.SubscriberConfig{})
	ch := mustSubscribe(t, sub, context.Background(), "t")
	m := receive(t, ch, 10*time.Second)
	require.Equal(t, other.UUID, m.UUID)
	m.Ack()
	select {
	case m := <-ch:
		t.Fatalf("message %s delivered behind a parked row of its key", m.UUID)
	case <-time.After(300 * time.Millisecond):
	}
	failed, err := f.store.ListFailed(context.Background(), 0, 10)
	require.NoError(t, err)
	require.Len(t, failed, 1)
	require.Equal(t, "bad", failed[0].UUID)
	require.Contains(t, failed[0].LastError, "undecodable")

	// Discarding the parked row releases the key.
	_, err = f.store.Discard(context.Background(), failed[0].ID)
	require.NoError(t, err)
	m = receive(t, ch, 10*time.Second) // the poll (1s) finds it
	require.Equal(t, behind.UUID, m.UUID)
	m.Ack()
}

// TestSubscriberTransactionalHandler consumes with a handler that runs in
// a transaction and publishes through the outbox: the Router pattern of
// an event-driven service, with the native table at both ends.
func TestSubscriberTransactionalHandler(t *testing.T) {
	t.Parallel()
	f := newSubscriberFixture(t, testdb.Postgres, gormstore.Config{})
	tm, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: f.db, Store: f.store})
	require.NoError(t, err)
	in := keyedMessage("k", 1)
	require.NoError(t, f.pub.Publish("in", in))

	sub := f.newSubscriber(t, gormstore.SubscriberConfig{})
	m := receive(t, mustSubscribe(t, sub, context.Background(), "in"), 10*time.Second)
	require.NoError(t, tm.Run(m.Context(), "Handle", func(ctx context.Context) error {
		out := message.NewMessage(outbox.NewUUID(), m.Payload)
		out.SetContext(ctx)
		return f.pub.Publish("out", out)
	}))
	m.Ack()
	got := receive(t, mustSubscribe(t, sub, context.Background(), "out"), 10*time.Second)
	require.Equal(t, "1", string(got.Payload))
	require.Equal(t, "Handle", got.Metadata.Get(outbox.MetadataCommand))
	got.Ack()
}

// TestSubscriberSQLite: the subscriber works on SQLite, by polling.
func TestSubscriberSQLite(t *testing.T) {
	t.Parallel()
	f := newSubscriberFixture(t, testdb.SQLite, gormstore.Config{})
	msgs := []*message.Message{keyedMessage("k", 1), keyedMessage("k", 2), keyedMessage("", 3)}
	require.NoError(t, f.pub.Publish("t", msgs...))
	sub := f.newSubscriber(t, gormstore.SubscriberConfig{PollInterval: 20 * time.Millisecond})
	ch := mustSubscribe(t, sub, context.Background(), "t")
	first := receive(t, ch, 10*time.Second)
	first.Nack()
	var got []string
	for range msgs {
		m := receive(t, ch, 10*time.Second)
		got = append(got, m.UUID)
		m.Ack()
	}
	require.Equal(t, []string{msgs[0].UUID, msgs[1].UUID, msgs[2].UUID}, got)
	require.Eventually(t, func() bool {
		return testdb.Count(t, f.db, "txoutbox_outbox", "") == 0
	}, 10*time.Second, 20*time.Millisecond)
}

func TestSubscriberConfig(t *testing.T) {
	t.Parallel()
	_, err := gormstore.NewSubscriber(nil, gormstore.SubscriberConfig{})
	require.ErrorIs(t, err, gormstore.ErrInvalidConfig)
	f := newSubscriberFixture(t, testdb.SQLite, gormstore.Config{})
	_, err = gormstore.NewSubscriber(f.store, gormstore.SubscriberConfig{BatchSize: -1, PollInterval: -1, NackDelay: -1, RetryInterval: -1})
	require.ErrorIs(t, err, gormstore.ErrInvalidConfig)
	require.Len(t, err.(interface{ Unwrap() []error }).Unwrap(), 4, "every problem is reported")
	sub := f.newSubscriber(t, gormstore.SubscriberConfig{})
	_, err = sub.Subscribe(context.Background(), "")
	require.ErrorIs(t, err, outbox.ErrEmptyTopic)
}
