package walrelay_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"github.com/txoutbox/txoutbox/walrelay"
	"gorm.io/gorm"
)

// The table the relay parks into is gormstore's.
var _ walrelay.Table = (*gormstore.Store)(nil)

// failingPublisher publishes through Publisher the messages that fail
// lets through; a call stops at the first message fail rejects, the ones
// before it published, as a broker that publishes one by one.
type failingPublisher struct {
	message.Publisher
	mu   sync.Mutex
	fail func(m *message.Message) error
}

func (p *failingPublisher) setFail(f func(m *message.Message) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail = f
}

func (p *failingPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	fail := p.fail
	p.mu.Unlock()
	for i, m := range msgs {
		if fail == nil {
			break
		}
		if err := fail(m); err != nil {
			if i > 0 {
				if perr := p.Publisher.Publish(topic, msgs[:i]...); perr != nil {
					return perr
				}
			}
			return err
		}
	}
	return p.Publisher.Publish(topic, msgs...)
}

// parkTable migrates an outbox table in a schema of the test's own and
// returns its store.
func parkTable(t *testing.T, cfg gormstore.Config) (*gormstore.Store, *gorm.DB) {
	t.Helper()
	db, _ := testdb.OpenPostgres(t)
	st, err := gormstore.New(db, cfg)
	require.NoError(t, err)
	require.NoError(t, st.Migrate(context.Background()))
	return st, db
}

// keyedEvents emits perKey events for each of keys, interleaved, one
// command each; it returns their UUIDs in commit order and the key of
// each.
func keyedEvents(t *testing.T, emitTo func(recs ...outbox.Record), keys []string, perKey int, tag string) (order []string, keyOf map[string]string) {
	t.Helper()
	keyOf = map[string]string{}
	for i := range perKey {
		for _, k := range keys {
			id := fmt.Sprintf("%s-%s-%04d", k, tag, i)
			keyOf[id] = k
			order = append(order, id)
			emitTo(record(id, k))
		}
	}
	return order, keyOf
}

// firstPerKey returns, per key, the UUIDs of got in the order of their
// first arrival.
func firstPerKey(got []string, keyOf map[string]string) map[string][]string {
	seen := map[string]bool{}
	out := map[string][]string{}
	for _, id := range got {
		if seen[id] {
			continue
		}
		seen[id] = true
		out[keyOf[id]] = append(out[keyOf[id]], id)
	}
	return out
}

func perKey(order []string, keyOf map[string]string, keep func(key string) bool) map[string][]string {
	out := map[string][]string{}
	for _, id := range order {
		if k := keyOf[id]; keep(k) {
			out[k] = append(out[k], id)
		}
	}
	return out
}

// waitStats waits until the table's stats satisfy ok.
func waitStats(t *testing.T, st *gormstore.Store, within time.Duration, ok func(outbox.Stats) bool) outbox.Stats {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		s, err := st.Stats(context.Background())
		require.NoError(t, err)
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("table stats %+v not reached within %v", s, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runForwarder runs the table's forwarder until the test ends.
func runForwarder(t *testing.T, st *gormstore.Store, pub message.Publisher, cfg walrelay.Config) {
	t.Helper()
	f, err := outbox.NewForwarder(st, pub, outbox.ForwarderConfig{PollInterval: 50 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Logger: cfg.Forwarder.Logger})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}

// A key whose events the broker always rejects: its first event is
// parked in the table with its error and its later events written behind
// it, while the other keys go on from the stream, in order. Requeued, the
// table's forwarder delivers the key's events in order; once they are
// delivered, the key's new events come from the stream again.
func TestPoisonKeyParkedInTableOthersFlow(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	st, db := parkTable(t, gormstore.Config{KeepDelivered: true})
	cfg.Table = st
	cfg.Forwarder.MaxAttempts = 3
	s := newSink(t)
	pub := &failingPublisher{Publisher: s.pub}
	rejected := func(m *message.Message) error {
		if m.UUID[:2] == "k1" {
			return errors.New("payload rejected by broker")
		}
		return nil
	}
	pub.setFail(rejected)
	stop := start(t, pub, cfg)

	keys := []string{"k0", "k1", "k2", "k3"}
	order, keyOf := keyedEvents(t, func(recs ...outbox.Record) { emit(t, conn, cfg.Prefix, recs...) }, keys, 10, "a")
	others := perKey(order, keyOf, func(k string) bool { return k != "k1" })
	waitDistinct(t, s, 30, 20*time.Second)
	waitStats(t, st, 20*time.Second, func(s outbox.Stats) bool { return s.Failed == 1 && s.Pending == 9 })
	stop()
	got := s.received()
	require.Equal(t, others, firstPerKey(got, keyOf), "the other keys' events, in order")
	for _, id := range got {
		require.NotEqual(t, "k1", keyOf[id], "k1 event %s was published", id)
	}

	parked, err := st.ListFailed(context.Background(), 0, 10)
	require.NoError(t, err)
	require.Len(t, parked, 1)
	require.Equal(t, "k1-a-0000", parked[0].UUID)
	require.Equal(t, "k1", parked[0].PartitionKey)
	require.Equal(t, 3, parked[0].Attempts)
	require.Contains(t, parked[0].LastError, "parked after 3 attempts: payload rejected by broker")
	var behind []string
	require.NoError(t, db.Raw("SELECT uuid FROM txoutbox_outbox WHERE failed_at IS NULL AND delivered_at IS NULL ORDER BY id").Scan(&behind).Error)
	require.Equal(t, order2(order, keyOf, "k1")[1:], behind, "k1's later events wait behind it, in order")

	// Fixed and requeued: the table's forwarder delivers k1's events in
	// order, and the relay, started again, publishes k1's new events
	// once the table has none left.
	pub.setFail(nil)
	_, err = st.RequeueIDs(context.Background(), parked[0].ID)
	require.NoError(t, err)
	runForwarder(t, st, s.pub, cfg)
	waitDistinct(t, s, 40, 20*time.Second)
	start(t, pub, cfg)
	waitStats(t, st, 20*time.Second, func(s outbox.Stats) bool { return s.Failed == 0 && s.Pending == 0 })
	time.Sleep(2 * cfg.Forwarder.PollInterval) // the relay's view of the table ages
	emit(t, conn, cfg.Prefix, record("k1-b-0000", "k1"))
	keyOf["k1-b-0000"] = "k1"
	got = waitDistinct(t, s, 41, 20*time.Second)
	all := perKey(append(order, "k1-b-0000"), keyOf, func(string) bool { return true })
	require.Equal(t, all, firstPerKey(got, keyOf))
	var inTable int
	require.NoError(t, db.Raw("SELECT count(*) FROM txoutbox_outbox WHERE uuid = 'k1-b-0000'").Scan(&inTable).Error)
	require.Zero(t, inTable, "published from the stream, not through the table")
}

// order2 returns the UUIDs of key in order.
func order2(order []string, keyOf map[string]string, key string) []string {
	var out []string
	for _, id := range order {
		if keyOf[id] == key {
			out = append(out, id)
		}
	}
	return out
}

// A relay started again while a key is parked sends the key's new events
// to the table, behind the parked one, even with a publisher that would
// take them.
func TestRestartedRelayKeepsParkedKeyInTable(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	st, db := parkTable(t, gormstore.Config{})
	cfg.Table = st
	cfg.Forwarder.MaxAttempts = 2
	s := newSink(t)
	pub := &failingPublisher{Publisher: s.pub}
	pub.setFail(func(m *message.Message) error {
		if m.UUID[:2] == "k1" {
			return errors.New("rejected")
		}
		return nil
	})
	stop := start(t, pub, cfg)
	emit(t, conn, cfg.Prefix, record("k1-0", "k1"))
	emit(t, conn, cfg.Prefix, record("k0-0", "k0"))
	s.waitFor(t, 1, 20*time.Second)
	waitStats(t, st, 20*time.Second, func(s outbox.Stats) bool { return s.Failed == 1 })
	stop()
	waitActive(t, conn, cfg.Slot, false)

	pub.setFail(nil)
	emit(t, conn, cfg.Prefix, record("k1-1", "k1"))
	start(t, pub, cfg)
	emit(t, conn, cfg.Prefix, record("k1-2", "k1"))
	emit(t, conn, cfg.Prefix, record("k0-1", "k0"))
	s.waitFor(t, 2, 20*time.Second)
	waitStats(t, st, 20*time.Second, func(s outbox.Stats) bool { return s.Pending == 2 })
	require.Equal(t, []string{"k0-0", "k0-1"}, s.received())
	var rows []string
	require.NoError(t, db.Raw("SELECT uuid FROM txoutbox_outbox ORDER BY id").Scan(&rows).Error)
	require.Equal(t, []string{"k1-0", "k1-1", "k1-2"}, rows)
}

// A publisher that fails at random: every event arrives at least once,
// each key's first arrivals in commit order; nothing is parked while
// attempts remain.
func TestRandomPublishFailures(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	st, _ := parkTable(t, gormstore.Config{})
	cfg.Table = st
	cfg.Forwarder.MaxAttempts = 1000
	cfg.Forwarder.BatchSize = 20
	cfg.Forwarder.MinBackoff = time.Millisecond
	cfg.Forwarder.MaxBackoff = 20 * time.Millisecond
	s := newSink(t)
	pub := &failingPublisher{Publisher: s.pub}
	var calls, failed atomic.Int64
	pub.setFail(func(*message.Message) error {
		calls.Add(1)
		if rand.N(5) == 0 {
			failed.Add(1)
			return errors.New("random failure")
		}
		return nil
	})
	start(t, pub, cfg)

	keys := []string{"k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"}
	keyOf := map[string]string{}
	var order []string
	n := 0
	for i := range 120 {
		var recs []outbox.Record
		for range 1 + i%3 {
			k := keys[rand.N(len(keys))]
			id := fmt.Sprintf("%s-%04d", k, n)
			n++
			keyOf[id] = k
			order = append(order, id)
			recs = append(recs, record(id, k))
		}
		emit(t, conn, cfg.Prefix, recs...)
	}
	got := waitDistinct(t, s, len(order), 60*time.Second)
	require.Equal(t, perKey(order, keyOf, func(string) bool { return true }), firstPerKey(got, keyOf))
	stats, err := st.Stats(context.Background())
	require.NoError(t, err)
	require.Zero(t, stats.Failed+stats.Pending, "nothing went to the table")
	t.Logf("%d events, %d messages arrived; %d of %d message publishes failed", len(order), len(got), failed.Load(), calls.Load())
}

// waitDistinct waits until the sink holds n distinct messages and
// returns what it holds.
func waitDistinct(t *testing.T, s *sink, n int, within time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := s.received()
		seen := map[string]bool{}
		for _, id := range got {
			seen[id] = true
		}
		if len(seen) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d distinct of %d messages within %v", len(seen), n, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A broker that is down for 2 s: nothing is parked, however many
// attempts the events used, and everything is delivered after, in order.
func TestBrokerOutageParksNothing(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	st, _ := parkTable(t, gormstore.Config{})
	cfg.Table = st
	cfg.Forwarder.MaxAttempts = 2
	s := newSink(t)
	pub := &failingPublisher{Publisher: s.pub}
	var attempts atomic.Int64
	pub.setFail(func(*message.Message) error {
		attempts.Add(1)
		return errors.New("dial tcp 127.0.0.1:5672: connect: connection refused")
	})
	start(t, pub, cfg)
	keys := []string{"k0", "k1", "k2"}
	order, keyOf := keyedEvents(t, func(recs ...outbox.Record) { emit(t, conn, cfg.Prefix, recs...) }, keys, 5, "a")
	time.Sleep(2 * time.Second)
	require.Greater(t, attempts.Load(), int64(2*len(keys)), "the events used up their attempts")
	stats, err := st.Stats(context.Background())
	require.NoError(t, err)
	require.Zero(t, stats.Failed+stats.Pending, "nothing was parked while the broker was down")
	pub.setFail(nil)
	got := waitDistinct(t, s, len(order), 20*time.Second)
	require.Equal(t, perKey(order, keyOf, func(string) bool { return true }), firstPerKey(got, keyOf))
	stats, err = st.Stats(context.Background())
	require.NoError(t, err)
	require.Zero(t, stats.Failed+stats.Pending)
}

// A key that waits for its retry holds back only its own events: the
// other keys' events go on from the stream, and the slot is not
// confirmed past the waiting event.
func TestRetryingKeyDoesNotStallOtherKeys(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	cfg.Forwarder.MinBackoff = time.Minute
	cfg.Forwarder.MaxBackoff = time.Hour
	s := newSink(t)
	pub := &failingPublisher{Publisher: s.pub}
	var failures atomic.Int64
	pub.setFail(func(m *message.Message) error {
		if m.UUID[:2] == "k0" {
			failures.Add(1)
			return errors.New("rejected")
		}
		return nil
	})
	start(t, pub, cfg)
	emit(t, conn, cfg.Prefix, record("k0-0", "k0"))
	var afterK0 uint64
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT pg_current_wal_lsn() - '0/0'").Scan(&afterK0))
	require.Eventually(t, func() bool { return failures.Load() > 0 }, 10*time.Second, 10*time.Millisecond)
	emit(t, conn, cfg.Prefix, record("k0-1", "k0"))
	emit(t, conn, cfg.Prefix, record("k1-0", "k1"), record("k2-0", "k2"))
	emit(t, conn, cfg.Prefix, record("k1-1", "k1"))
	got := waitDistinct(t, s, 3, 10*time.Second)
	require.Equal(t, []string{"k1-0", "k2-0", "k1-1"}, got)
	time.Sleep(3 * cfg.StatusInterval)
	require.Less(t, slotConfirmed(t, conn, cfg.Slot), afterK0, "confirmed past the transaction of the event waiting for its retry")
}

// An event that cannot become a message (here: no topic) is parked in
// the table at once, with the reason, and its key's later events follow
// it there; nothing of it is published.
func TestUndecodableEventParkedAtOnce(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	st, db := parkTable(t, gormstore.Config{})
	cfg.Table = st
	s := newSink(t)
	start(t, s.pub, cfg)
	bad := record("k1-0", "k1")
	bad.Topic = ""
	emit(t, conn, cfg.Prefix, record("k0-0", "k0"), bad)
	emit(t, conn, cfg.Prefix, record("k1-1", "k1"), record("k0-1", "k0"))
	waitDistinct(t, s, 2, 20*time.Second)
	waitStats(t, st, 20*time.Second, func(s outbox.Stats) bool { return s.Failed == 1 && s.Pending == 1 })
	parked, err := st.ListFailed(context.Background(), 0, 10)
	require.NoError(t, err)
	require.Len(t, parked, 1)
	require.Equal(t, "k1-0", parked[0].UUID)
	require.Contains(t, parked[0].LastError, "undecodable row: empty topic")
	var rows []string
	require.NoError(t, db.Raw("SELECT uuid FROM txoutbox_outbox ORDER BY id").Scan(&rows).Error)
	require.Equal(t, []string{"k1-0", "k1-1"}, rows)
	require.Equal(t, []string{"k0-0", "k0-1"}, s.received())
}

// Discarding the parked event releases its key: the table's forwarder
// delivers the events written behind it, in order, without it.
func TestDiscardReleasesParkedKey(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	st, _ := parkTable(t, gormstore.Config{})
	cfg.Table = st
	cfg.Forwarder.MaxAttempts = 2
	s := newSink(t)
	pub := &failingPublisher{Publisher: s.pub}
	pub.setFail(func(m *message.Message) error {
		if m.UUID == "k1-0" {
			return errors.New("rejected for good")
		}
		return nil
	})
	start(t, pub, cfg)
	for i := range 4 {
		emit(t, conn, cfg.Prefix, record(fmt.Sprintf("k1-%d", i), "k1"))
	}
	waitStats(t, st, 20*time.Second, func(s outbox.Stats) bool { return s.Failed == 1 && s.Pending == 3 })
	require.Empty(t, s.received())
	parked, err := st.ListFailed(context.Background(), 0, 10)
	require.NoError(t, err)
	require.Len(t, parked, 1)
	ids, err := st.DiscardIDs(context.Background(), parked[0].ID)
	require.NoError(t, err)
	require.Equal(t, []int64{parked[0].ID}, ids)
	runForwarder(t, st, s.pub, cfg)
	got := waitDistinct(t, s, 3, 20*time.Second)
	require.Equal(t, []string{"k1-1", "k1-2", "k1-3"}, got)
}
