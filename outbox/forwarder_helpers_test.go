package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// seqEvent is an event that carries its key and its position in the key.
type seqEvent struct {
	Key string `json:"key"`
	Seq int    `json:"seq"`
}

func (e seqEvent) PartitionKey() string { return e.Key }

// delivery is one message a recordingPublisher accepted.
type delivery struct {
	topic string
	uuid  string
	ev    seqEvent
}

// recordingPublisher records every message it accepts, in order. fail, when
// set, decides per message whether the publish fails.
type recordingPublisher struct {
	mu    sync.Mutex
	got   []delivery
	calls int
	fail  func(topic string, ev seqEvent) error
	// notify is signalled after each accepted message.
	notify chan struct{}
}

func newRecordingPublisher() *recordingPublisher {
	return &recordingPublisher{notify: make(chan struct{}, 1)}
}

func (p *recordingPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	batch := make([]delivery, 0, len(msgs))
	for _, m := range msgs {
		var ev seqEvent
		if err := json.Unmarshal(m.Payload, &ev); err != nil {
			return fmt.Errorf("test publisher: bad payload %q: %w", m.Payload, err)
		}
		if p.fail != nil {
			if err := p.fail(topic, ev); err != nil {
				// Messages before the failing one went out, as with a
				// real broker that publishes one by one.
				p.got = append(p.got, batch...)
				return err
			}
		}
		batch = append(batch, delivery{topic: topic, uuid: m.UUID, ev: ev})
	}
	p.got = append(p.got, batch...)
	select {
	case p.notify <- struct{}{}:
	default:
	}
	return nil
}

func (p *recordingPublisher) Close() error { return nil }

func (p *recordingPublisher) deliveries() []delivery {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]delivery(nil), p.got...)
}

// waitUnique waits until n distinct message UUIDs were delivered.
func (p *recordingPublisher) waitUnique(t *testing.T, n int, timeout time.Duration) []delivery {
	t.Helper()
	deadline := time.After(timeout)
	for {
		got := p.deliveries()
		if countUnique(got) >= n {
			return got
		}
		select {
		case <-p.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timeout: %d of %d distinct events delivered", countUnique(got), n)
		}
	}
}

func countUnique(ds []delivery) int {
	seen := map[string]bool{}
	for _, d := range ds {
		seen[d.uuid] = true
	}
	return len(seen)
}

// requireKeyOrder checks that, per key, the first delivery of each event is
// in sequence order, and that every seq 0..n-1 of each key arrived.
func requireKeyOrder(t *testing.T, ds []delivery, perKey map[string]int) {
	t.Helper()
	seen := map[string]bool{}
	next := map[string]int{}
	for _, d := range ds {
		if seen[d.uuid] {
			continue
		}
		seen[d.uuid] = true
		require.Equal(t, next[d.ev.Key], d.ev.Seq, "key %s: first deliveries out of order", d.ev.Key)
		next[d.ev.Key]++
	}
	for k, n := range perKey {
		require.Equal(t, n, next[k], "key %s: events delivered", k)
	}
}

// fill saves events for keys (each key gets perKey events with seq 0..)
// directly through the store, chunk events per transaction, interleaving
// keys. It returns the number of events per key.
func fill(t *testing.T, db *gorm.DB, st outbox.Store, topic string, keys, perKey int) map[string]int {
	t.Helper()
	enc := outbox.NewEncoder(outbox.EncoderConfig{Topic: func(string, any) string { return topic }})
	var entries []outbox.Entry
	counts := map[string]int{}
	for s := 0; s < perKey; s++ {
		for k := 0; k < keys; k++ {
			key := fmt.Sprintf("k%02d", k)
			entries = append(entries, outbox.Entry{Event: seqEvent{Key: key, Seq: s}})
			counts[key]++
		}
	}
	recs, err := enc.EncodeAll(entries)
	require.NoError(t, err)
	for start := 0; start < len(recs); start += 2000 {
		end := min(start+2000, len(recs))
		require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
			return st.Save(context.Background(), tx, recs[start:end])
		}))
	}
	return counts
}

// newStore migrates the default outbox table on db and returns its store.
func newStore(t *testing.T, db *gorm.DB, cfg gormstore.Config) *gormstore.Store {
	t.Helper()
	st, err := gormstore.New(db, cfg)
	require.NoError(t, err)
	require.NoError(t, st.Migrate(context.Background()))
	return st
}

// runForwarder runs f until the test ends and fails the test if Run
// returns an error.
func runForwarder(t *testing.T, f *outbox.Forwarder) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(30 * time.Second):
				t.Error("forwarder did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// pending counts undelivered rows of the default table.
func pending(t *testing.T, db *gorm.DB, where string) int64 {
	t.Helper()
	var n int64
	q := "SELECT count(*) FROM txoutbox_outbox WHERE delivered_at IS NULL"
	if where != "" {
		q += " AND " + where
	}
	require.NoError(t, db.Raw(q).Scan(&n).Error)
	return n
}

// failOneIn returns a recordingPublisher.fail that fails about one
// message in n, at random from seed, safely for concurrent publishers.
func failOneIn(n int, seed uint64) func(string, seqEvent) error {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, seed+1))
	return func(string, seqEvent) error {
		mu.Lock()
		defer mu.Unlock()
		if rng.IntN(n) == 0 {
			return errors.New("broker hiccup")
		}
		return nil
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
