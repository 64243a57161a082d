//go:build chaos

package chaos_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/outbox"
)

// TestMain runs the forwarder subprocess of TestSIGKILLForwarder, the
// consumer subprocess of TestSIGKILLConsumer, or the relay subprocess of
// the WAL tests, when the test binary is started as one (see childEnv),
// and the tests otherwise.
func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
	case "consumer":
		os.Exit(runConsumerChild())
	case "walrelay":
		os.Exit(runWALRelayChild())
	default:
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}

// placed is the event of every test: a numbered event of one partition key.
type placed struct {
	ID  string `json:"id"`  // unique per event
	Key string `json:"key"` // partition key
	Seq int    `json:"seq"` // position among the key's events, from 0
}

func (e placed) PartitionKey() string { return e.Key }

func decodePlaced(msg *message.Message) (placed, error) {
	var e placed
	if err := json.Unmarshal(msg.Payload, &e); err != nil {
		return e, fmt.Errorf("decode payload of message %s: %w", msg.UUID, err)
	}
	return e, nil
}

// delivery is one message received by a test publisher.
type delivery struct {
	UUID  string
	Event placed
	At    time.Time
}

// memPublisher records every message published to it, in order. Each
// Publish call takes at least delay, like a broker round trip, so that a
// backlog takes a while to drain.
type memPublisher struct {
	delay time.Duration

	mu    sync.Mutex
	all   []delivery
	seen  map[string]bool // by event ID
	calls int
}

func newMemPublisher(delay time.Duration) *memPublisher {
	return &memPublisher{delay: delay, seen: map[string]bool{}}
}

func (p *memPublisher) Publish(_ string, msgs ...*message.Message) error {
	time.Sleep(p.delay)
	now := time.Now()
	ds := make([]delivery, 0, len(msgs))
	for _, m := range msgs {
		e, err := decodePlaced(m)
		if err != nil {
			return err
		}
		ds = append(ds, delivery{UUID: m.UUID, Event: e, At: now})
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	for _, d := range ds {
		p.all = append(p.all, d)
		p.seen[d.Event.ID] = true
	}
	return nil
}

func (p *memPublisher) Close() error { return nil }

// snapshot returns every delivery so far.
func (p *memPublisher) snapshot() []delivery {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]delivery(nil), p.all...)
}

func (p *memPublisher) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.all)
}

func (p *memPublisher) has(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[id]
}

// requireFirstDeliveriesInOrder checks that, per partition key, the first
// delivery of each event comes in the key's Seq order. Redeliveries may
// repeat earlier events; they are ignored.
func requireFirstDeliveriesInOrder(t *testing.T, ds []delivery) {
	t.Helper()
	first := map[string]bool{}
	last := map[string]int{}
	violations := 0
	var example string
	for _, d := range ds {
		if first[d.Event.ID] {
			continue
		}
		first[d.Event.ID] = true
		prev, ok := last[d.Event.Key]
		if ok && d.Event.Seq <= prev {
			violations++
			if example == "" {
				example = fmt.Sprintf("key %s: seq %d first delivered after seq %d", d.Event.Key, d.Event.Seq, prev)
			}
		}
		last[d.Event.Key] = d.Event.Seq
	}
	require.Zero(t, violations, "per-key order of first deliveries broken %d times, e.g. %s", violations, example)
}

// logRecord is one log record kept by recordingHandler.
type logRecord struct {
	At    time.Time
	Level slog.Level
	Msg   string
}

// recordingHandler keeps every log record (to count warnings during an
// outage) and writes it to stderr, which go test shows with -v or on
// failure.
type recordingHandler struct {
	out  slog.Handler
	mu   *sync.Mutex
	recs *[]logRecord
}

func newRecordingLogger() (*slog.Logger, *recordingHandler) {
	h := &recordingHandler{
		out:  slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}),
		mu:   &sync.Mutex{},
		recs: &[]logRecord{},
	}
	return slog.New(h), h
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *recordingHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	*h.recs = append(*h.recs, logRecord{At: time.Now(), Level: r.Level, Msg: r.Message})
	h.mu.Unlock()
	if h.out.Enabled(ctx, r.Level) {
		return h.out.Handle(ctx, r)
	}
	return nil
}

func (h *recordingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.out = h.out.WithAttrs(as)
	return &c
}

func (h *recordingHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.out = h.out.WithGroup(name)
	return &c
}

// count returns the number of records at level or above in [from, to].
func (h *recordingHandler) count(level slog.Level, from, to time.Time) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range *h.recs {
		if r.Level >= level && !r.At.Before(from) && !r.At.After(to) {
			n++
		}
	}
	return n
}

// openPostgres opens a pool of its own on dsn, closed when t ends.
func openPostgres(t testing.TB, dsn string) *gorm.DB {
	t.Helper()
	db, err := gorm.Open(postgres.Open(dsn), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	sqlDB, err := db.DB()
	require.NoError(t, err)
	sqlDB.SetMaxOpenConns(8)
	t.Cleanup(func() { _ = sqlDB.Close() })
	return db
}

// openMySQLPool opens a pool of its own on the MySQL/MariaDB database at
// dsn, closed when t ends.
func openMySQLPool(t testing.TB, dsn string) *gorm.DB {
	t.Helper()
	db, err := gorm.Open(mysql.Open(dsn), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	sqlDB, err := db.DB()
	require.NoError(t, err)
	sqlDB.SetMaxOpenConns(8)
	t.Cleanup(func() { _ = sqlDB.Close() })
	return db
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// eventually polls cond every interval until it returns true or timeout
// passes, then fails with msg and the last state cond reported.
// retryingProducers dispatch placeOrder commands from n goroutines, one
// key each ("p<w>"), in order; a command that fails is retried until it
// returns nil (across a database restart), and counts as sent only then.
type retryingProducers struct {
	stopping atomic.Bool
	wg       sync.WaitGroup
	mu       sync.Mutex
	sentIDs  []string
	errs     atomic.Int64 // dispatch errors retried
	stopOnce func()
}

// startRetryingProducers starts n producers on b, each pausing pause
// between commands, stopped at the latest when t ends.
func startRetryingProducers(ctx context.Context, t *testing.T, b *bus.Bus, n int, pause time.Duration) *retryingProducers {
	p := &retryingProducers{}
	for w := range n {
		p.wg.Go(func() {
			for seq := 0; !p.stopping.Load(); seq++ {
				cmd := placeOrder{placed{ID: fmt.Sprintf("p%d-%d", w, seq), Key: fmt.Sprintf("p%d", w), Seq: seq}}
				for {
					err := b.Dispatch(ctx, cmd)
					if err == nil {
						break
					}
					p.errs.Add(1)
					if ctx.Err() != nil {
						t.Errorf("producer %d: command %s never committed: %v", w, cmd.ID, err)
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
				p.mu.Lock()
				p.sentIDs = append(p.sentIDs, cmd.ID)
				p.mu.Unlock()
				time.Sleep(pause)
			}
		})
	}
	p.stopOnce = sync.OnceFunc(func() { p.stopping.Store(true); p.wg.Wait() })
	t.Cleanup(p.stopOnce)
	return p
}

// stop stops the producers and waits for their commands in flight.
func (p *retryingProducers) stop() { p.stopOnce() }

// sent returns the IDs of the commands that returned nil, in order of return.
func (p *retryingProducers) sent() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.sentIDs...)
}

// requireDrained waits until fw's store has no pending row (a batch the
// consumer already received may not be finished yet: Publish returns before
// the forwarder marks the rows delivered), then requires that none was
// parked.
func requireDrained(ctx context.Context, t *testing.T, fw *outbox.Forwarder, what string) {
	t.Helper()
	var st outbox.Stats
	eventually(t, 15*time.Second, 20*time.Millisecond, func() (bool, string) {
		var err error
		st, err = fw.Stats(ctx)
		require.NoError(t, err)
		return st.Pending == 0, fmt.Sprintf("%d rows pending", st.Pending)
	}, "rows left pending "+what)
	require.Zero(t, st.Failed, "rows parked "+what)
}

func eventually(t *testing.T, timeout, interval time.Duration, cond func() (bool, string), msg string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not done after %v (%s)", msg, timeout, state)
		}
		time.Sleep(interval)
	}
}
