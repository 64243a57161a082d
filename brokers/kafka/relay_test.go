package kafka_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
	"github.com/txoutbox/txoutbox/brokers/kafka"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

// placed is the event of the relay tests: the Seq-th event of Key.
type placed struct {
	ID  string `json:"id"`  // unique per event
	Key string `json:"key"` // partition key
	Seq int    `json:"seq"` // position among the key's events, from 0
}

func (e placed) PartitionKey() string { return e.Key }

// relay is an outbox on PostgreSQL (a schema of the test's own) with a
// forwarder that publishes every event to one topic through pub.
type relay struct {
	fw   *outbox.Forwarder
	tr   *middleware.Transactional
	keys int

	mu        sync.Mutex
	committed []string // message UUIDs, in commit order
	next      int      // events committed so far
}

// startRelay migrates a fresh schema and runs a forwarder with cfg on it
// until t ends.
func startRelay(t *testing.T, pub message.Publisher, topic string, keys int, cfg outbox.ForwarderConfig) *relay {
	t.Helper()
	ctx := context.Background()
	db, _ := testdb.OpenPostgres(t)
	require.NoError(t, gormstore.Migrate(ctx, db))
	store, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &relay{keys: keys}
	r.fw, err = outbox.NewForwarder(store, pub, cfg)
	require.NoError(t, err)
	r.tr, err = middleware.NewTransactional(middleware.TransactionalConfig{
		DB: db, Store: store,
		Encoder: outbox.NewEncoder(outbox.EncoderConfig{Topic: func(string, any) string { return topic }}),
		AfterCommit: []func(middleware.AfterCommitParams){func(p middleware.AfterCommitParams) {
			r.mu.Lock()
			for _, rec := range p.Records {
				r.committed = append(r.committed, rec.Message.UUID)
			}
			r.mu.Unlock()
			r.fw.Wake()
		}},
	})
	require.NoError(t, err)

	runCtx, stop := context.WithCancel(ctx)
	var done sync.WaitGroup
	done.Go(func() {
		if err := r.fw.Run(runCtx); err != nil {
			t.Errorf("forwarder Run: %v", err)
		}
	})
	t.Cleanup(func() { stop(); done.Wait() })
	return r
}

// commit commits n events in one transaction, spread round-robin over the
// relay's keys.
func (r *relay) commit(t *testing.T, n int) {
	t.Helper()
	r.mu.Lock()
	first := r.next
	r.next += n
	r.mu.Unlock()
	events := make([]any, n)
	for i := range n {
		seq := first + i
		events[i] = placed{ID: fmt.Sprint(seq), Key: fmt.Sprintf("key-%02d", seq%r.keys), Seq: seq / r.keys}
	}
	require.NoError(t, r.tr.Run(context.Background(), "Place", func(ctx context.Context) error {
		return outbox.Emit(ctx, events...)
	}))
}

// committedUUIDs returns the UUIDs of the events committed so far.
func (r *relay) committedUUIDs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.committed...)
}

// waitReceived waits until c received every committed event.
func (r *relay) waitReceived(t *testing.T, c *consumer, within time.Duration, what string) {
	t.Helper()
	eventually(t, within, 20*time.Millisecond, func() (bool, string) {
		want := r.committedUUIDs()
		n := c.missing(want)
		return n == 0, fmt.Sprintf("%d of %d committed events not received", n, len(want))
	}, what)
}

// checkDrained fails t unless the outbox has no pending or parked row.
func (r *relay) checkDrained(t *testing.T) {
	t.Helper()
	st, err := r.fw.Stats(context.Background())
	require.NoError(t, err)
	require.Zero(t, st.Pending, "rows left pending")
	require.Zero(t, st.Failed, "rows parked")
}

// checkKeyOrder fails t unless every key's events arrived in commit
// order, each key from a single partition and with the key as record key.
// With exactOnce, every event must have arrived exactly once; otherwise
// a copy received again may repeat the key's earlier events, but the
// events received for the first time must still be in order. It returns
// the number of partitions the keys used.
func checkKeyOrder(t *testing.T, rs []receipt, exactlyOnce bool) (partitions int) {
	t.Helper()
	nextSeq := map[string]int{}
	keyPartition := map[string]int32{}
	used := map[int32]bool{}
	for _, r := range rs {
		var e placed
		require.NoError(t, json.Unmarshal(r.Payload, &e), "payload of %s", r.UUID)
		require.Equal(t, e.Key, string(r.Key), "record key of %s", r.UUID)
		require.Equal(t, e.Key, r.Metadata.Get(outbox.MetadataPartitionKey), "partition_key metadata of %s", r.UUID)
		if p, ok := keyPartition[e.Key]; ok {
			require.Equal(t, p, r.Partition, "key %s on two partitions", e.Key)
		}
		keyPartition[e.Key] = r.Partition
		used[r.Partition] = true
		switch {
		case e.Seq == nextSeq[e.Key]:
			nextSeq[e.Key]++
		case e.Seq < nextSeq[e.Key] && !exactlyOnce:
			// a copy of an event received before
		default:
			t.Fatalf("key %s: event %d arrived when %d was next", e.Key, e.Seq, nextSeq[e.Key])
		}
	}
	return len(used)
}

// TestForwarderToConsumerGroup relays 2,000 events of 25 keys from a
// PostgreSQL outbox through the forwarder and the publisher to a topic of
// 8 partitions, read by the subscriber in a consumer group: every event
// arrives exactly once, in commit order per key, each key from one
// partition, the keys spread over several partitions.
func TestForwarderToConsumerGroup(t *testing.T) {
	t.Parallel()
	const (
		events     = 2000
		keys       = 25
		partitions = 8
	)
	brokers := brokertest.StartKafka(t).ListenAddrs()
	topic := brokertest.RandomName("relay-")
	createTopic(t, brokers, topic, partitions)
	cfg := kafka.Config{Brokers: brokers, ConsumerGroup: brokertest.RandomName("group-")}
	pub := &countingPublisher{Publisher: newPublisher(t, cfg)}
	c := consume(t, newSubscriber(t, cfg), topic)
	r := startRelay(t, pub, topic, keys, outbox.ForwarderConfig{PollInterval: 200 * time.Millisecond})

	start := time.Now()
	for range events / 100 {
		r.commit(t, 100)
	}
	r.waitReceived(t, c, 30*time.Second, "events not received")
	elapsed := time.Since(start)
	time.Sleep(200 * time.Millisecond) // room for a late duplicate
	calls, failed := pub.stats()
	t.Logf("%d events relayed and consumed in %v, %d Publish calls (%d failed), %d duplicates",
		events, elapsed.Round(time.Millisecond), calls, failed, c.duplicates())
	require.Zero(t, failed, "failed Publish calls")
	require.Zero(t, c.duplicates(), "duplicates without a crash")
	used := checkKeyOrder(t, c.receipts(), true)
	require.GreaterOrEqual(t, used, partitions/2, "the keys used %d of %d partitions", used, partitions)
	r.checkDrained(t)
}

// countingPublisher counts the Publish calls made through it, with their
// time and outcome.
type countingPublisher struct {
	message.Publisher
	mu    sync.Mutex
	calls []publishCall
}

type publishCall struct {
	At  time.Time
	Err error
}

func (p *countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	err := p.Publisher.Publish(topic, msgs...)
	p.mu.Lock()
	p.calls = append(p.calls, publishCall{At: time.Now(), Err: err})
	p.mu.Unlock()
	return err
}

// stats returns the number of calls and of failed calls.
func (p *countingPublisher) stats() (calls, failed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.calls {
		if c.Err != nil {
			failed++
		}
	}
	return len(p.calls), failed
}

// between returns the calls that ended in [from, to].
func (p *countingPublisher) between(from, to time.Time) []publishCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []publishCall
	for _, c := range p.calls {
		if !c.At.Before(from) && !c.At.After(to) {
			out = append(out, c)
		}
	}
	return out
}

// firstSuccessAfter returns the end of the first successful call after t0.
func (p *countingPublisher) firstSuccessAfter(t0 time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.calls {
		if c.Err == nil && c.At.After(t0) {
			return c.At, true
		}
	}
	return time.Time{}, false
}
