package walrelay_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/internal/walmsg"
	"github.com/txoutbox/txoutbox/outbox"
	"github.com/txoutbox/txoutbox/walrelay"
)

const topic = "walrelay-test"

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// connect opens a normal connection to the test database, closed when t
// ends, and fails the test loudly unless the server runs with
// wal_level=logical.
func connect(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, testdb.URL())
	if err != nil {
		t.Fatalf("PostgreSQL is required at TEST_DATABASE_URL (default %s): %v; run scripts/ensure-services.sh postgres", testdb.DefaultURL, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	var level string
	require.NoError(t, conn.QueryRow(ctx, "SHOW wal_level").Scan(&level))
	if level != "logical" {
		t.Fatalf("PostgreSQL runs with wal_level=%s; the WAL relay needs wal_level=logical: run scripts/ensure-services.sh postgres (it sets it and restarts PostgreSQL once)", level)
	}
	return conn
}

// setup creates a slot and publication of the test's own, dropped when
// the test ends (after the relays it started stopped), and returns their
// config.
func setup(t testing.TB, conn *pgx.Conn) walrelay.Config {
	t.Helper()
	id := randomHex(6)
	cfg := walrelay.Config{
		Slot:           "txo_test_" + id,
		Publication:    "txo_test_" + id,
		Prefix:         "txoutbox-test-" + id,
		StatusInterval: 100 * time.Millisecond,
		Forwarder: outbox.ForwarderConfig{
			BatchSize:    100,
			PollInterval: 200 * time.Millisecond,
			MinBackoff:   10 * time.Millisecond,
			MaxBackoff:   100 * time.Millisecond,
			Logger:       slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, walrelay.Setup(ctx, testdb.URL(), cfg))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		// The relay's walsender may take a moment to exit after it stopped.
		var err error
		for ctx.Err() == nil {
			if _, err = conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", cfg.Slot); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("drop replication slot %s: %v", cfg.Slot, err)
		}
		if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+cfg.Publication); err != nil {
			t.Errorf("drop publication %s: %v", cfg.Publication, err)
		}
	})
	return cfg
}

// testWriter writes a relay's log lines to the test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// record is an event of the test: its UUID says its place in commit order.
func record(id, key string) outbox.Record {
	m := message.NewMessage(id, []byte(`{"id":"`+id+`"}`))
	m.Metadata.Set("name", "TestEvent")
	return outbox.Record{Topic: topic, PartitionKey: key, Message: m}
}

// emit writes one command's events in one committed transaction.
func emit(t *testing.T, conn *pgx.Conn, prefix string, recs ...outbox.Record) {
	t.Helper()
	content, err := walmsg.Encode(recs)
	require.NoError(t, err)
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "SELECT pg_logical_emit_message(true, $1, $2::bytea)", prefix, content)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
}

func mustEncode(t testing.TB, recs ...outbox.Record) []byte {
	t.Helper()
	content, err := walmsg.Encode(recs)
	require.NoError(t, err)
	return content
}

// emitMessage writes a logical decoding message in tx.
func emitMessage(t *testing.T, tx pgx.Tx, prefix string, recs ...outbox.Record) {
	t.Helper()
	content, err := walmsg.Encode(recs)
	require.NoError(t, err)
	_, err = tx.Exec(context.Background(), "SELECT pg_logical_emit_message(true, $1, $2::bytea)", prefix, content)
	require.NoError(t, err)
}

// sink is a GoChannel with one subscriber that collects what arrives.
type sink struct {
	pub  *gochannel.GoChannel
	mu   sync.Mutex
	got  []string // message UUIDs in arrival order
	done chan struct{}
}

func newSink(t *testing.T) *sink {
	t.Helper()
	s := &sink{
		pub:  gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{}),
		done: make(chan struct{}),
	}
	msgs, err := s.pub.Subscribe(context.Background(), topic)
	require.NoError(t, err)
	go func() {
		defer close(s.done)
		for m := range msgs {
			s.mu.Lock()
			s.got = append(s.got, m.UUID)
			s.mu.Unlock()
			m.Ack()
		}
	}()
	t.Cleanup(func() {
		require.NoError(t, s.pub.Close())
		<-s.done
	})
	return s
}

func (s *sink) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// waitFor waits until the sink holds at least n messages.
func (s *sink) waitFor(t *testing.T, n int, within time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := s.received()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d messages within %v: %v", len(got), n, within, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// start runs a relay until the returned stop is called or the test ends;
// stop waits for Run to return and fails the test if it returned an
// error.
func start(t testing.TB, pub message.Publisher, cfg walrelay.Config) (stop func()) {
	t.Helper()
	r, err := walrelay.NewRelay(testdb.URL(), pub, cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				require.NoError(t, err, "Run")
			case <-time.After(20 * time.Second):
				t.Fatal("Run did not return within 20s of its context's end")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitActive waits until the slot has a reader (active or not).
func waitActive(t *testing.T, conn *pgx.Conn, slot string, active bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var got bool
		require.NoError(t, conn.QueryRow(context.Background(), "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&got))
		if got == active {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot %s active=%v, want %v after 15s", slot, got, active)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ids(prefix string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s-%04d", prefix, i))
	}
	return out
}

func TestRelaysCommittedEventsOnceInCommitOrder(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	s := newSink(t)
	start(t, s.pub, cfg)
	ctx := context.Background()

	var want []string
	n := 0
	next := func() string { n++; return fmt.Sprintf("ev-%04d", n) }
	for i := range 30 {
		var recs []outbox.Record
		for range 1 + i%3 {
			id := next()
			recs = append(recs, record(id, fmt.Sprintf("key-%d", i%4)))
			want = append(want, id)
		}
		emit(t, conn, cfg.Prefix, recs...)
	}

	// Rolled back: never relayed.
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	emitMessage(t, tx, cfg.Prefix, record("rolled-back", "key-0"))
	require.NoError(t, tx.Rollback(ctx))

	// Another prefix: not the relay's.
	tx, err = conn.Begin(ctx)
	require.NoError(t, err)
	emitMessage(t, tx, cfg.Prefix+"-other", record("other-prefix", "key-0"))
	require.NoError(t, tx.Commit(ctx))

	// Commit order, not start order: the transaction begun first commits
	// last.
	other := connect(t)
	first, err := conn.Begin(ctx)
	require.NoError(t, err)
	emitMessage(t, first, cfg.Prefix, record("begun-first", "key-x"))
	second, err := other.Begin(ctx)
	require.NoError(t, err)
	emitMessage(t, second, cfg.Prefix, record("begun-second", "key-x"))
	require.NoError(t, second.Commit(ctx))
	require.NoError(t, first.Commit(ctx))
	want = append(want, "begun-second", "begun-first")

	// Not transactional: exists whatever the transaction comes to, so it
	// is no outbox event.
	_, err = conn.Exec(ctx, "SELECT pg_logical_emit_message(false, $1, $2::bytea)", cfg.Prefix, mustEncode(t, record("not-transactional", "key-0")))
	require.NoError(t, err)

	// A command larger than a batch (BatchSize 100), and one transaction
	// with the messages of three commands.
	var big []outbox.Record
	for range 250 {
		id := next()
		big = append(big, record(id, fmt.Sprintf("key-%d", n%5)))
		want = append(want, id)
	}
	emit(t, conn, cfg.Prefix, big...)
	tx, err = conn.Begin(ctx)
	require.NoError(t, err)
	for range 3 {
		id := next()
		emitMessage(t, tx, cfg.Prefix, record(id, "key-1"))
		want = append(want, id)
	}
	require.NoError(t, tx.Commit(ctx))

	for range 20 {
		id := next()
		emit(t, conn, cfg.Prefix, record(id, ""))
		want = append(want, id)
	}

	s.waitFor(t, len(want), 20*time.Second)
	time.Sleep(300 * time.Millisecond) // anything more would arrive now
	require.Equal(t, want, s.received())
}

func TestRestartResumesFromConfirmedPosition(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	// No status update within the test but the one at shutdown.
	cfg.StatusInterval = time.Minute
	s := newSink(t)

	stop := start(t, s.pub, cfg)
	before := ids("before", 0, 50)
	for _, id := range before {
		emit(t, conn, cfg.Prefix, record(id, "k"))
	}
	s.waitFor(t, len(before), 20*time.Second)
	stop() // confirms what it published
	waitActive(t, conn, cfg.Slot, false)

	var confirmed string
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", cfg.Slot).Scan(&confirmed))
	t.Logf("confirmed after the first relay: %s", confirmed)

	// Written while no relay runs: kept by the slot.
	during := ids("during", 0, 50)
	for _, id := range during {
		emit(t, conn, cfg.Prefix, record(id, "k"))
	}
	start(t, s.pub, cfg)
	after := ids("after", 0, 20)
	for _, id := range after {
		emit(t, conn, cfg.Prefix, record(id, "k"))
	}
	want := append(append(append([]string(nil), before...), during...), after...)
	s.waitFor(t, len(want), 20*time.Second)
	time.Sleep(300 * time.Millisecond)
	// A relay that stopped cleanly confirmed everything it published:
	// nothing comes twice.
	require.Equal(t, want, s.received())
}

// A relay whose stream is cut (its walsender terminated, as in a crash of
// the server side or the network) reconnects and resumes from the
// confirmed position: nothing is lost, and what comes twice is what was
// published but not confirmed when the stream was cut.
func TestReconnectAfterStreamCutLosesNothing(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	s := newSink(t)
	start(t, s.pub, cfg)
	waitActive(t, conn, cfg.Slot, true)

	all := ids("ev", 0, 200)
	for i, id := range all {
		emit(t, conn, cfg.Prefix, record(id, "k"))
		if i == 100 {
			_, err := conn.Exec(context.Background(), "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active", cfg.Slot)
			require.NoError(t, err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := s.received()
		seen := map[string]bool{}
		for _, id := range got {
			seen[id] = true
		}
		if len(seen) == len(all) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d distinct of %d within 30s", len(seen), len(all))
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	got := s.received()
	// Replays come as a run that repeats a stretch of what came before:
	// with duplicates removed, the order is the commit order.
	var firsts []string
	seen := map[string]bool{}
	for _, id := range got {
		if !seen[id] {
			firsts = append(firsts, id)
			seen[id] = true
		}
	}
	require.Equal(t, all, firsts)
	t.Logf("%d messages for %d events: %d duplicates after the cut", len(got), len(all), len(got)-len(all))
	// Per key (all share one), every delivery after a duplicate goes on
	// in order from it.
	pos := map[string]int{}
	for i, id := range all {
		pos[id] = i
	}
	for i := 1; i < len(got); i++ {
		if p, q := pos[got[i-1]], pos[got[i]]; q != p+1 && q > p {
			t.Fatalf("gap in delivery: %s then %s", got[i-1], got[i])
		}
	}
}

// taggingPublisher records which relay published each message.
type taggingPublisher struct {
	message.Publisher
	name string
	by   *sync.Map // UUID → relay name
	n    atomic.Int64
}

func (p *taggingPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		p.by.Store(m.UUID, p.name)
	}
	p.n.Add(int64(len(msgs)))
	return p.Publisher.Publish(topic, msgs...)
}

func TestSecondRelayStandsByAndTakesOver(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	s := newSink(t)
	var by sync.Map
	a := &taggingPublisher{Publisher: s.pub, name: "a", by: &by}
	b := &taggingPublisher{Publisher: s.pub, name: "b", by: &by}

	stopA := start(t, a, cfg)
	waitActive(t, conn, cfg.Slot, true)
	// The reader holds its lock on the connection that streams.
	var locks int
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_locks l JOIN pg_replication_slots s ON l.pid = s.active_pid WHERE s.slot_name = $1 AND l.locktype = 'advisory' AND l.granted", cfg.Slot).Scan(&locks))
	require.Equal(t, 1, locks, "advisory locks held by the slot's walsender")
	start(t, b, cfg)
	time.Sleep(3 * cfg.Forwarder.PollInterval) // b tries, and stands by

	first := ids("first", 0, 30)
	for _, id := range first {
		emit(t, conn, cfg.Prefix, record(id, "k"))
	}
	s.waitFor(t, len(first), 20*time.Second)
	require.Zero(t, b.n.Load(), "the standby published while the reader ran")

	stopA()
	took := time.Now()
	second := ids("second", 0, 30)
	for _, id := range second {
		emit(t, conn, cfg.Prefix, record(id, "k"))
	}
	s.waitFor(t, len(first)+len(second), 20*time.Second)
	t.Logf("the standby published the %d events written after the reader stopped within %v", len(second), time.Since(took).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond)
	require.Equal(t, append(append([]string(nil), first...), second...), s.received())
	for _, id := range first {
		v, _ := by.Load(id)
		require.Equal(t, "a", v, id)
	}
	for _, id := range second {
		v, _ := by.Load(id)
		require.Equal(t, "b", v, id)
	}
}

// flakyPublisher fails its first calls.
type flakyPublisher struct {
	message.Publisher
	failures atomic.Int64
}

func (p *flakyPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.failures.Add(-1) >= 0 {
		return outbox.Unavailable(errors.New("broker down"))
	}
	return p.Publisher.Publish(topic, msgs...)
}

func TestRetriesFailedPublishesInOrder(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	s := newSink(t)
	pub := &flakyPublisher{Publisher: s.pub}
	pub.failures.Store(5)
	start(t, pub, cfg)

	want := ids("ev", 0, 40)
	keyOf := map[string]string{}
	for i, id := range want {
		keyOf[id] = fmt.Sprintf("k%d", i%3)
		emit(t, conn, cfg.Prefix, record(id, keyOf[id]))
	}
	s.waitFor(t, len(want), 20*time.Second)
	time.Sleep(300 * time.Millisecond)
	got := s.received()
	require.ElementsMatch(t, want, got, "each event once")
	// Order holds per key: a failed event of one key does not hold the
	// others back within a batch.
	perKey := func(list []string) map[string][]string {
		m := map[string][]string{}
		for _, id := range list {
			m[keyOf[id]] = append(m[keyOf[id]], id)
		}
		return m
	}
	require.Equal(t, perKey(want), perKey(got))
}

func TestRunFailsWithoutSlot(t *testing.T) {
	connect(t)
	cfg := walrelay.Config{Slot: "txo_test_missing_" + randomHex(4), Forwarder: outbox.ForwarderConfig{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}}
	r, err := walrelay.NewRelay(testdb.URL(), gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{}), cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = r.Run(ctx)
	require.ErrorIs(t, err, walrelay.ErrNoSlot)
	require.ErrorContains(t, err, "walrelay.Setup before the first event is written")
}

func TestRunFailsWithoutPublication(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	_, err := conn.Exec(context.Background(), "DROP PUBLICATION "+cfg.Publication)
	require.NoError(t, err)
	r, err := walrelay.NewRelay(testdb.URL(), gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{}), cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.ErrorIs(t, r.Run(ctx), walrelay.ErrNoPublication)
}

func TestConfigValidate(t *testing.T) {
	require.NoError(t, walrelay.Config{}.Validate())
	err := walrelay.Config{Slot: "Bad-Name", Publication: "x y", StatusInterval: -1}.Validate()
	require.ErrorIs(t, err, outbox.ErrInvalidConfig)
	require.ErrorContains(t, err, `Slot "Bad-Name"`)
	require.ErrorContains(t, err, `Publication "x y"`)
	require.ErrorContains(t, err, "StatusInterval is negative")
	_, err = walrelay.NewRelay(testdb.URL(), nil, walrelay.Config{})
	require.ErrorContains(t, err, "missing publisher")
}

func TestSetupIsIdempotent(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, walrelay.Setup(ctx, testdb.URL(), cfg))
	var tables int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1", cfg.Publication).Scan(&tables))
	require.Zero(t, tables, "the publication holds no tables")
}

func slotConfirmed(t *testing.T, conn *pgx.Conn, slot string) uint64 {
	t.Helper()
	var lsn uint64
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&lsn))
	return lsn
}

// A relay with nothing to publish confirms the server's WAL end, so that
// its slot does not hold the WAL that other writes of the cluster make.
func TestIdleRelayConfirmsServerWALEnd(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	s := newSink(t)
	start(t, s.pub, cfg)
	emit(t, conn, cfg.Prefix, record("ev-0", "k"))
	s.waitFor(t, 1, 20*time.Second)

	ctx := context.Background()
	table := "txo_test_wal_" + randomHex(4)
	_, err := conn.Exec(ctx, "CREATE TABLE "+table+" (v int)")
	require.NoError(t, err)
	defer func() { _, _ = conn.Exec(ctx, "DROP TABLE "+table) }()
	_, err = conn.Exec(ctx, "INSERT INTO "+table+" SELECT generate_series(1, 1000)")
	require.NoError(t, err)
	var walEnd uint64
	require.NoError(t, conn.QueryRow(ctx, "SELECT pg_current_wal_lsn() - '0/0'").Scan(&walEnd))
	deadline := time.Now().Add(15 * time.Second)
	for slotConfirmed(t, conn, cfg.Slot) < walEnd {
		if time.Now().After(deadline) {
			t.Fatalf("slot confirmed %d, want at least %d (the WAL end after writes without events)", slotConfirmed(t, conn, cfg.Slot), walEnd)
		}
		time.Sleep(50 * time.Millisecond)
	}
	require.Equal(t, []string{"ev-0"}, s.received())
}

// A message with the relay's prefix that is no frame stops the relay: its
// events cannot be published, and going on would lose them.
func TestRunStopsAtUndecodableMessage(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	s := newSink(t)
	emit(t, conn, cfg.Prefix, record("ev-0", "k"))
	_, err := conn.Exec(context.Background(), "SELECT pg_logical_emit_message(true, $1, $2::bytea)", cfg.Prefix, []byte{9, 9, 9})
	require.NoError(t, err)
	r, err := walrelay.NewRelay(testdb.URL(), s.pub, cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = r.Run(ctx)
	require.ErrorIs(t, err, walrelay.ErrUndecodable)
	require.ErrorIs(t, err, walmsg.ErrUnknownVersion)
	require.Equal(t, []string{"ev-0"}, s.received(), "what came before the message is published")
	// ... and confirmed: the slot stops right before the message.
	waitActive(t, conn, cfg.Slot, false)
	var pending int
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2, 'messages', 'true') WHERE substr(data, 1, 1) = 'M'", cfg.Slot, cfg.Publication).Scan(&pending))
	require.Equal(t, 1, pending, "messages left in the slot")
}
