package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
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

func quietConfig(cfg outbox.ForwarderConfig) outbox.ForwarderConfig {
	if cfg.Logger == nil {
		cfg.Logger = discardLogger()
	}
	return cfg
}

// eachServer runs fn as a parallel subtest on each database server,
// for tests of forwarders that share a table across connections.
func eachServer(t *testing.T, fn func(t *testing.T, d testdb.Dialect)) {
	t.Helper()
	for _, d := range []testdb.Dialect{testdb.Postgres, testdb.MySQL} {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			fn(t, d)
		})
	}
}

func TestForwarder_DeliversEverythingInKeyOrder(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		counts := fill(t, db, st, "orders", 10, 50)
		pub := newRecordingPublisher()
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{BatchSize: 64}))
		require.NoError(t, err)
		runForwarder(t, f)
		got := pub.waitUnique(t, 500, 30*time.Second)
		requireKeyOrder(t, got, counts)
		require.Len(t, got, 500, "no duplicates without failures")
		require.Eventually(t, func() bool { return pending(t, db, "") == 0 }, 10*time.Second, 20*time.Millisecond)
	})
}

func TestForwarder_RandomPublishFailures(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		counts := fill(t, db, st, "orders", 20, 50)
		pub := newRecordingPublisher()
		pub.fail = failOneIn(10, 1)
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{
			BatchSize: 50, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond,
			MaxAttempts: 1000, PollInterval: 20 * time.Millisecond,
		}))
		require.NoError(t, err)
		runForwarder(t, f)
		got := pub.waitUnique(t, 1000, 60*time.Second)
		requireKeyOrder(t, got, counts)
		require.Eventually(t, func() bool { return pending(t, db, "") == 0 }, 10*time.Second, 20*time.Millisecond)
	})
}

func TestForwarder_FourForwardersExactlyOnceInOrder(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, d testdb.Dialect) {
		db := testdb.Open(t, d)
		st := newStore(t, db, gormstore.Config{})
		counts := fill(t, db, st, "orders", 50, 400) // 20,000 events
		pub := newRecordingPublisher()
		for range 4 {
			// Separate stores on one table, as separate processes would have.
			st, err := gormstore.New(db, gormstore.Config{})
			require.NoError(t, err)
			f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{BatchSize: 200, PollInterval: 10 * time.Millisecond}))
			require.NoError(t, err)
			runForwarder(t, f)
		}
		got := pub.waitUnique(t, 20000, 120*time.Second)
		require.Len(t, got, 20000, "each event published exactly once")
		requireKeyOrder(t, got, counts)
		// The last batch is received before its forwarder finishes it.
		require.Eventually(t, func() bool { return pending(t, db, "") == 0 }, 10*time.Second, 20*time.Millisecond)
	})
}

// slowPublisher stands for a broker that takes perMessage to accept each
// message, so that publishing, not the database, sets the relay's pace.
type slowPublisher struct {
	*recordingPublisher
	perMessage time.Duration
}

func (p slowPublisher) Publish(topic string, msgs ...*message.Message) error {
	time.Sleep(time.Duration(len(msgs)) * p.perMessage)
	return p.recordingPublisher.Publish(topic, msgs...)
}

// Two forwarders on one backlog share it: neither finds every key held by
// the other one's claims and waits for the poll; each takes the keys left
// free. (Without the sharing, in seven of eight runs one of them published
// fewer than 1,500 of the 4,000 events, as few as 0; with it, each
// published 1,963-2,037.)
func TestForwarder_TwoForwardersShareABacklog(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.Postgres)
	st := newStore(t, db, gormstore.Config{})
	counts := fill(t, db, st, "orders", 50, 80) // 4,000 events
	pub := newRecordingPublisher()
	var published [2]atomic.Int64
	var stops []func()
	for i := range published {
		st, err := gormstore.New(db, gormstore.Config{})
		require.NoError(t, err)
		f, err := outbox.NewForwarder(st, slowPublisher{pub, 200 * time.Microsecond}, quietConfig(outbox.ForwarderConfig{
			BatchSize: 100, PollInterval: 10 * time.Millisecond,
			OnBatch: func(info outbox.BatchInfo) { published[i].Add(int64(info.Published)) },
		}))
		require.NoError(t, err)
		stops = append(stops, runForwarder(t, f))
	}
	got := pub.waitUnique(t, 4000, 60*time.Second)
	require.Len(t, got, 4000, "each event published exactly once")
	requireKeyOrder(t, got, counts)
	for _, stop := range stops {
		stop() // each counts its last batch
	}
	for i := range published {
		require.GreaterOrEqual(t, published[i].Load(), int64(1500), "forwarder %d published %d of 4,000", i, published[i].Load())
	}
}

func TestForwarder_PoisonEventParkedOthersFlow(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		counts := fill(t, db, st, "orders", 5, 20)
		var fixed atomic.Bool
		pub := newRecordingPublisher()
		pub.fail = func(_ string, ev seqEvent) error {
			if ev.Key == "k02" && ev.Seq == 3 && !fixed.Load() {
				return errors.New("payload rejected by broker")
			}
			return nil
		}
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{
			BatchSize: 16, MaxAttempts: 3, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
			PollInterval: 10 * time.Millisecond,
		}))
		require.NoError(t, err)
		stop := runForwarder(t, f)

		// Every other key drains; k02 stops at its poison event, which is
		// parked after its third attempt.
		require.Eventually(t, func() bool {
			stats, err := st.Stats(context.Background())
			return err == nil && stats.Failed == 1 && pending(t, db, "") == 17
		}, 30*time.Second, 10*time.Millisecond)
		stop()
		parked, err := st.ListFailed(context.Background(), 0, 10)
		require.NoError(t, err)
		require.Len(t, parked, 1)
		require.Equal(t, "k02", parked[0].PartitionKey)
		require.Equal(t, 3, parked[0].Attempts)
		require.Contains(t, parked[0].LastError, "payload rejected by broker")
		require.Contains(t, parked[0].LastError, "parked after 3 attempts")
		stats, err := st.Stats(context.Background())
		require.NoError(t, err)
		require.Equal(t, int64(1), stats.Failed)
		require.Equal(t, int64(16), stats.Pending, "k02's later events wait behind the parked one")
		for _, d := range pub.deliveries() {
			if d.ev.Key == "k02" {
				require.Less(t, d.ev.Seq, 3, "no k02 event after the poison one was published")
			}
		}

		// After the fix, requeueing releases the key, in order.
		fixed.Store(true)
		n, err := st.Requeue(context.Background(), parked[0].ID)
		require.NoError(t, err)
		require.Equal(t, int64(1), n)
		f2, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{PollInterval: 10 * time.Millisecond}))
		require.NoError(t, err)
		runForwarder(t, f2)
		got := pub.waitUnique(t, 100, 30*time.Second)
		requireKeyOrder(t, got, counts)
	})
}

func TestForwarder_DiscardReleasesKey(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		fill(t, db, st, "orders", 1, 5)
		pub := newRecordingPublisher()
		pub.fail = func(_ string, ev seqEvent) error {
			if ev.Seq == 1 {
				return errors.New("poison")
			}
			return nil
		}
		other := newRecordingPublisher()
		f, err := outbox.NewForwarder(st, publisherPair{pub, other}, quietConfig(outbox.ForwarderConfig{
			MaxAttempts: 2, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond, PollInterval: 10 * time.Millisecond,
		}))
		require.NoError(t, err)
		runForwarder(t, f)
		require.Eventually(t, func() bool {
			rows, err := st.ListFailed(context.Background(), 0, 10)
			require.NoError(t, err)
			return len(rows) == 1
		}, 30*time.Second, 10*time.Millisecond)
		rows, err := st.ListFailed(context.Background(), 0, 10)
		require.NoError(t, err)
		n, err := st.Discard(context.Background(), rows[0].ID)
		require.NoError(t, err)
		require.Equal(t, int64(1), n)
		f.Wake()
		require.Eventually(t, func() bool { return pending(t, db, "") == 0 }, 30*time.Second, 10*time.Millisecond)
		var seqs []int
		seen := map[string]bool{}
		for _, d := range pub.deliveries() {
			if !seen[d.uuid] {
				seen[d.uuid] = true
				seqs = append(seqs, d.ev.Seq)
			}
		}
		require.Equal(t, []int{0, 2, 3, 4}, seqs, "first deliveries: the discarded event never, the rest in order")
	})
}

// publisherPair publishes to a and, when that succeeds, records in b: a
// publisher whose failures are independent of the "other" events.
type publisherPair struct{ a, b *recordingPublisher }

func (p publisherPair) Publish(topic string, msgs ...*message.Message) error {
	if err := p.a.Publish(topic, msgs...); err != nil {
		return err
	}
	return p.b.Publish(topic, msgs...)
}
func (p publisherPair) Close() error { return nil }

func TestForwarder_OutOfOrderCommitsAreNotSkipped(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, d testdb.Dialect) {
		db := testdb.Open(t, d)
		st := newStore(t, db, gormstore.Config{})
		enc := outbox.NewEncoder(outbox.EncoderConfig{})
		rec := func(key string, seq int) []outbox.Record {
			r, err := enc.EncodeAll([]outbox.Entry{{Event: seqEvent{Key: key, Seq: seq}}})
			require.NoError(t, err)
			return r
		}
		pub := newRecordingPublisher()
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{PollInterval: 10 * time.Millisecond}))
		require.NoError(t, err)
		runForwarder(t, f)

		// Transaction A takes the lower id but commits last.
		txA := db.Begin()
		require.NoError(t, txA.Error)
		require.NoError(t, st.Save(context.Background(), txA, rec("a", 0)))
		require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
			return st.Save(context.Background(), tx, rec("b", 0))
		}))
		got := pub.waitUnique(t, 1, 10*time.Second)
		require.Equal(t, "b", got[0].ev.Key)
		// Give the forwarder rounds of claims while A is still open.
		time.Sleep(100 * time.Millisecond)
		require.NoError(t, txA.Commit().Error)
		got = pub.waitUnique(t, 2, 10*time.Second)
		require.Equal(t, "a", got[1].ev.Key, "the row committed out of id order was relayed")
		require.Eventually(t, func() bool { return pending(t, db, "") == 0 }, 10*time.Second, 10*time.Millisecond)
	})
}

func TestForwarder_KeyOrderAcrossTopics(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		enc := outbox.NewEncoder(outbox.EncoderConfig{Topic: func(_ string, ev any) string {
			return fmt.Sprintf("topic-%d", ev.(seqEvent).Seq%3)
		}})
		var entries []outbox.Entry
		for s := range 30 {
			entries = append(entries, outbox.Entry{Event: seqEvent{Key: "k", Seq: s}}, outbox.Entry{Event: seqEvent{Key: "j", Seq: s}})
		}
		recs, err := enc.EncodeAll(entries)
		require.NoError(t, err)
		require.NoError(t, db.Transaction(func(tx *gorm.DB) error { return st.Save(context.Background(), tx, recs) }))
		pub := newRecordingPublisher()
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{}))
		require.NoError(t, err)
		runForwarder(t, f)
		got := pub.waitUnique(t, 60, 10*time.Second)
		requireKeyOrder(t, got, map[string]int{"k": 30, "j": 30})
		for _, d := range got {
			require.Equal(t, fmt.Sprintf("topic-%d", d.ev.Seq%3), d.topic)
		}
	})
}

func TestForwarder_TopicsFilter(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		fill(t, db, st, "mine", 3, 4)
		fill(t, db, st, "theirs", 3, 4)
		pub := newRecordingPublisher()
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{Topics: []string{"mine"}, PollInterval: 10 * time.Millisecond}))
		require.NoError(t, err)
		stop := runForwarder(t, f)
		require.Eventually(t, func() bool { return pending(t, db, "topic = 'mine'") == 0 }, 10*time.Second, 10*time.Millisecond)
		stop()
		require.Equal(t, int64(12), pending(t, db, "topic = 'theirs'"))
		for _, d := range pub.deliveries() {
			require.Equal(t, "mine", d.topic)
		}
	})
}

func TestForwarder_UndecodableRowParkedAtOnce(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		fill(t, db, st, "orders", 1, 3)
		// Corrupt the metadata of the second row of the key.
		require.NoError(t, db.Exec(`UPDATE txoutbox_outbox SET metadata = '["not", "an", "object"]' WHERE id = (SELECT min(id) + 1 FROM txoutbox_outbox)`).Error)
		pub := newRecordingPublisher()
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{PollInterval: 10 * time.Millisecond}))
		require.NoError(t, err)
		stop := runForwarder(t, f)
		require.Eventually(t, func() bool {
			rows, err := st.ListFailed(context.Background(), 0, 10)
			require.NoError(t, err)
			return len(rows) == 1
		}, 10*time.Second, 10*time.Millisecond)
		stop()
		rows, err := st.ListFailed(context.Background(), 0, 10)
		require.NoError(t, err)
		require.Contains(t, rows[0].LastError, "metadata is not a JSON object of strings")
		require.Equal(t, 1, rows[0].Attempts, "parked on the first attempt")
		got := pub.deliveries()
		require.Len(t, got, 1, "only the row before the undecodable one")
		require.Equal(t, 0, got[0].ev.Seq)
		require.Equal(t, int64(2), pending(t, db, ""), "the parked row and the one behind it")
	})
}

// blockingPublisher blocks every Publish until release is closed. The
// messages of the first call are in first once started is closed.
type blockingPublisher struct {
	started chan struct{}
	release chan struct{}
	once    sync.Once
	first   []*message.Message
}

func (p *blockingPublisher) Publish(_ string, msgs ...*message.Message) error {
	p.once.Do(func() {
		p.first = msgs
		close(p.started)
	})
	<-p.release
	return nil
}
func (p *blockingPublisher) Close() error { return nil }

func TestForwarder_ShutdownReleasesStuckBatch(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		fill(t, db, st, "orders", 2, 5)
		pub := &blockingPublisher{started: make(chan struct{}), release: make(chan struct{})}
		defer close(pub.release)
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{ShutdownTimeout: 200 * time.Millisecond}))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- f.Run(ctx) }()
		<-pub.started
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after the shutdown timeout")
		}
		require.Equal(t, int64(10), pending(t, db, ""), "the stuck batch was released, nothing lost")
		// The rows can be claimed again at once (no lock left behind).
		pub2 := newRecordingPublisher()
		f2, err := outbox.NewForwarder(st, pub2, quietConfig(outbox.ForwarderConfig{}))
		require.NoError(t, err)
		runForwarder(t, f2)
		pub2.waitUnique(t, 10, 10*time.Second)
	})
}

// A full batch makes the forwarder claim the next one while it publishes.
// At shutdown both are given back: nothing is lost, and a new forwarder
// delivers every row exactly once.
func TestForwarder_ShutdownReleasesNextBatchToo(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.Postgres)
	st := newStore(t, db, gormstore.Config{})
	counts := fill(t, db, st, "orders", 8, 5)
	pub := &blockingPublisher{started: make(chan struct{}), release: make(chan struct{})}
	defer close(pub.release)
	f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{BatchSize: 5, ShutdownTimeout: 200 * time.Millisecond}))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	<-pub.started
	require.Len(t, pub.first, 5, "the first batch is full")
	// While the first batch hangs in Publish, the next one is claimed ahead:
	// its rows are locked too, so fewer than the 35 rows the first batch
	// left can be locked from elsewhere. (Counting them takes row locks for
	// an instant and never a key lock, so a claim ahead is never turned
	// away by it.)
	require.Eventually(t, func() bool {
		var free int64
		tx := db.Begin()
		defer tx.Rollback()
		require.NoError(t, tx.Raw("SELECT count(*) FROM (SELECT id FROM txoutbox_outbox FOR UPDATE SKIP LOCKED) s").Scan(&free).Error)
		return free < 35
	}, 10*time.Second, 10*time.Millisecond, "the next batch was not claimed while the first one published")
	cancel()
	require.NoError(t, <-done)
	require.Equal(t, int64(40), pending(t, db, ""), "both batches were released, nothing lost")

	pub2 := newRecordingPublisher()
	f2, err := outbox.NewForwarder(st, pub2, quietConfig(outbox.ForwarderConfig{BatchSize: 5}))
	require.NoError(t, err)
	runForwarder(t, f2)
	got := pub2.waitUnique(t, 40, 10*time.Second)
	require.Len(t, got, 40, "each event published exactly once")
	requireKeyOrder(t, got, counts)
}

func TestForwarder_ShutdownFinishesBatchInFlight(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, d testdb.Dialect) {
		db := testdb.Open(t, d)
		st := newStore(t, db, gormstore.Config{})
		fill(t, db, st, "orders", 2, 5)
		pub := &blockingPublisher{started: make(chan struct{}), release: make(chan struct{})}
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{ShutdownTimeout: 10 * time.Second}))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- f.Run(ctx) }()
		<-pub.started
		cancel()
		time.Sleep(50 * time.Millisecond)
		close(pub.release) // the publish completes within the shutdown timeout
		require.NoError(t, <-done)
		require.Equal(t, int64(0), pending(t, db, ""), "the batch in flight was finished")
	})
}

func TestForwarder_WakesOnNotifyFromAnotherConnection(t *testing.T) {
	t.Parallel()
	db, schema := testdb.OpenPostgres(t)
	st := newStore(t, db, gormstore.Config{})
	pub := newRecordingPublisher()
	f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{PollInterval: time.Hour}))
	require.NoError(t, err)
	runForwarder(t, f)
	time.Sleep(200 * time.Millisecond) // let the first (empty) claim and LISTEN happen

	// A writer with its own pool, as another process would have.
	writer := testdb.OpenURL(t, testdb.SchemaURL(t, schema))
	wst, err := gormstore.New(writer, gormstore.Config{})
	require.NoError(t, err)
	tm, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: writer, Store: wst})
	require.NoError(t, err)
	require.NoError(t, tm.Run(context.Background(), "Write", func(ctx context.Context) error {
		return outbox.Emit(ctx, seqEvent{Key: "k", Seq: 0})
	}))
	pub.waitUnique(t, 1, 10*time.Second) // with a one-hour poll, only NOTIFY can do this
}

func TestForwarder_KeepDeliveredAndPurge(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{KeepDelivered: true})
		fill(t, db, st, "orders", 2, 5)
		pub := newRecordingPublisher()
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{PollInterval: 10 * time.Millisecond}))
		require.NoError(t, err)
		stop := runForwarder(t, f)
		pub.waitUnique(t, 10, 10*time.Second)
		require.Eventually(t, func() bool { return pending(t, db, "") == 0 }, 10*time.Second, 10*time.Millisecond)
		stop()
		require.Equal(t, int64(10), testdb.Count(t, db, "txoutbox_outbox", "delivered_at IS NOT NULL"))
		n, err := st.PurgeDeliveredBatch(context.Background(), time.Hour, 3)
		require.NoError(t, err)
		require.Equal(t, int64(0), n, "nothing delivered an hour ago")
		var purged int64
		for {
			n, err = st.PurgeDeliveredBatch(context.Background(), 0, 3)
			require.NoError(t, err)
			require.LessOrEqual(t, n, int64(3), "one batch at most")
			if purged += n; n < 3 {
				break
			}
		}
		require.Equal(t, int64(10), purged)
		require.Equal(t, int64(0), testdb.Count(t, db, "txoutbox_outbox", ""))
		require.Len(t, pub.deliveries(), 10, "kept rows are not published again")
	})
}

func TestForwarder_Stats(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		fill(t, db, st, "a", 2, 3)
		fill(t, db, st, "b", 1, 4)
		require.NoError(t, db.Exec(`UPDATE txoutbox_outbox SET failed_at = created_at, attempts = 3, last_error = 'x' WHERE id = (SELECT max(id) FROM txoutbox_outbox)`).Error)
		time.Sleep(20 * time.Millisecond)
		stats, err := st.Stats(context.Background())
		require.NoError(t, err)
		require.Equal(t, int64(9), stats.Pending)
		require.Equal(t, int64(1), stats.Failed)
		require.Equal(t, int64(6), stats.Topics["a"].Pending)
		require.Equal(t, int64(3), stats.Topics["b"].Pending)
		require.Equal(t, int64(1), stats.Topics["b"].Failed)
		require.Greater(t, stats.OldestPendingAge, 10*time.Millisecond)
		require.Less(t, stats.OldestPendingAge, time.Minute)
	})
}

func TestForwarderConfig_Validate(t *testing.T) {
	t.Parallel()
	err := outbox.ForwarderConfig{BatchSize: -1, MinBackoff: time.Minute, MaxBackoff: time.Second, Topics: []string{""}}.Validate()
	require.ErrorIs(t, err, outbox.ErrInvalidConfig)
	for _, want := range []string{"BatchSize", "MinBackoff", "Topics[0]"} {
		require.Contains(t, err.Error(), want)
	}
	_, err = outbox.NewForwarder(nil, nil, outbox.ForwarderConfig{})
	require.ErrorIs(t, err, outbox.ErrInvalidConfig)
	require.Contains(t, err.Error(), "missing store")
	require.Contains(t, err.Error(), "missing publisher")
}

func TestForwarder_RunTwiceFails(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.SQLite)
	st := newStore(t, db, gormstore.Config{})
	fill(t, db, st, "orders", 1, 1)
	pub := newRecordingPublisher()
	f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{}))
	require.NoError(t, err)
	runForwarder(t, f)
	pub.waitUnique(t, 1, 10*time.Second) // Run is running
	require.ErrorIs(t, f.Run(context.Background()), outbox.ErrAlreadyRunning)
}

// A key whose head keeps failing must not hold back events of other keys
// that arrive later, even when nothing else was pending when it failed.
func TestForwarder_FailingKeyDoesNotStallLaterKeys(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		fill(t, db, st, "orders", 1, 1) // k00 seq 0: poison
		pub := newRecordingPublisher()
		var failures atomic.Int32
		pub.fail = func(_ string, ev seqEvent) error {
			if ev.Key == "k00" {
				failures.Add(1)
				return errors.New("rejected")
			}
			return nil
		}
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{
			MinBackoff: time.Minute, MaxBackoff: time.Hour, PollInterval: time.Hour,
		}))
		require.NoError(t, err)
		runForwarder(t, f)
		require.Eventually(t, func() bool { return failures.Load() > 0 }, 10*time.Second, 10*time.Millisecond)

		// Another key's event, with the poison row in a one-minute backoff.
		enc := outbox.NewEncoder(outbox.EncoderConfig{})
		recs, err := enc.EncodeAll([]outbox.Entry{{Event: seqEvent{Key: "k01", Seq: 0}}})
		require.NoError(t, err)
		require.NoError(t, db.Transaction(func(tx *gorm.DB) error { return st.Save(context.Background(), tx, recs) }))
		f.Wake()
		got := pub.waitUnique(t, 1, 10*time.Second)
		require.Equal(t, "k01", got[0].ev.Key)
	})
}

// Several forwarders with a publisher that fails at random: keys move
// between forwarders while their rows are being retried, and order per key
// must still hold among first deliveries.
func TestForwarder_FourForwardersWithFailuresKeepKeyOrder(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, d testdb.Dialect) {
		db := testdb.Open(t, d)
		st := newStore(t, db, gormstore.Config{})
		counts := fill(t, db, st, "orders", 20, 150) // 3,000 events
		pub := newRecordingPublisher()
		pub.fail = failOneIn(20, 3)
		for range 4 {
			st, err := gormstore.New(db, gormstore.Config{})
			require.NoError(t, err)
			f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{
				BatchSize: 40, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
				MaxAttempts: 1000, PollInterval: 5 * time.Millisecond,
			}))
			require.NoError(t, err)
			runForwarder(t, f)
		}
		got := pub.waitUnique(t, 3000, 120*time.Second)
		requireKeyOrder(t, got, counts)
	})
}

// countingStore counts a forwarder's claims, the claims that found
// nothing, and its answered HasDue calls, and hands its Listen wake-up to
// the test instead of listening.
type countingStore struct {
	*gormstore.Store
	claims, empty, hasDue atomic.Int64
	notify                chan func()
}

func (s *countingStore) Claim(ctx context.Context, p outbox.ClaimParams) (outbox.Claim, error) {
	c, err := s.Store.Claim(ctx, p)
	if err == nil {
		s.claims.Add(1)
		if len(c.Rows()) == 0 {
			s.empty.Add(1)
		}
	}
	return c, err
}

func (s *countingStore) HasDue(ctx context.Context, topics []string) (bool, error) {
	defer s.hasDue.Add(1) // counted once answered
	return s.Store.HasDue(ctx, topics)
}

func (s *countingStore) Listen(ctx context.Context, wake func()) error {
	s.notify <- wake
	<-ctx.Done()
	return ctx.Err()
}

// A commit in a process that wakes its forwarder in-process is announced
// twice: by Wake, which claims its row, and by the notification that
// follows. The notification then costs a HasDue, not a claim that finds
// nothing.
func TestForwarder_NotificationAfterWakeClaimsNothing(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.Postgres)
	st := &countingStore{Store: newStore(t, db, gormstore.Config{}), notify: make(chan func(), 1)}
	pub := newRecordingPublisher()
	var atBatch atomic.Int64 // HasDue calls when the last batch finished
	batches := make(chan struct{}, 1)
	f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{
		PollInterval: time.Minute,
		OnBatch: func(outbox.BatchInfo) {
			atBatch.Store(st.hasDue.Load())
			batches <- struct{}{}
		},
	}))
	require.NoError(t, err)
	runForwarder(t, f)
	notify := <-st.notify
	// Run starts with a claim, which finds the table empty.
	require.Eventually(t, func() bool { return st.empty.Load() == 1 }, 10*time.Second, time.Millisecond)
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	const commits = 20
	for i := range commits {
		recs, err := enc.EncodeAll([]outbox.Entry{{Event: seqEvent{Key: "k", Seq: i}}})
		require.NoError(t, err)
		require.NoError(t, db.Transaction(func(tx *gorm.DB) error { return st.Save(context.Background(), tx, recs) }))
		f.Wake()
		<-batches
		// After its batch the forwarder asks HasDue once, finds nothing,
		// and waits; then the commit's notification arrives. The next
		// commit waits until the forwarder has answered it.
		require.Eventually(t, func() bool { return st.hasDue.Load() > atBatch.Load() }, 10*time.Second, time.Millisecond)
		before := st.hasDue.Load() + st.claims.Load()
		notify()
		require.Eventually(t, func() bool { return st.hasDue.Load()+st.claims.Load() > before }, 10*time.Second, time.Millisecond)
	}
	require.Len(t, pub.waitUnique(t, commits, 10*time.Second), commits)
	require.Equal(t, int64(1), st.empty.Load(), "claims that found nothing, besides the first one")
}

// Where nothing calls Wake (the commits happen in other processes), a
// notification claims at once, without asking HasDue first.
func TestForwarder_NotificationClaimsAtOnceWithoutWake(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.Postgres)
	st := &countingStore{Store: newStore(t, db, gormstore.Config{}), notify: make(chan func(), 1)}
	pub := newRecordingPublisher()
	hasDueAtBatch := make(chan int64, 1)
	f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{
		PollInterval: time.Minute,
		OnBatch:      func(outbox.BatchInfo) { hasDueAtBatch <- st.hasDue.Load() },
	}))
	require.NoError(t, err)
	runForwarder(t, f)
	notify := <-st.notify
	require.Eventually(t, func() bool { return st.empty.Load() == 1 }, 10*time.Second, time.Millisecond)
	fill(t, db, st, "orders", 1, 1)
	notify()
	require.Zero(t, <-hasDueAtBatch, "HasDue asked before the claim")
	require.Len(t, pub.waitUnique(t, 1, 10*time.Second), 1)
}

// While a key waits behind its parked row, an idle forwarder's polls ask
// HasDue and claim nothing: the key's later rows are not due.
func TestForwarder_IdleBehindParkedRowDoesNotClaim(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := &countingStore{Store: newStore(t, db, gormstore.Config{}), notify: make(chan func(), 1)}
		fill(t, db, st, "orders", 1, 2)
		pub := newRecordingPublisher()
		pub.fail = func(_ string, ev seqEvent) error {
			if ev.Seq == 0 {
				return errors.New("rejected")
			}
			return nil
		}
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{MaxAttempts: 1, PollInterval: 10 * time.Millisecond}))
		require.NoError(t, err)
		runForwarder(t, f)
		require.Eventually(t, func() bool {
			stats, err := st.Stats(context.Background())
			return err == nil && stats.Failed == 1
		}, 10*time.Second, 5*time.Millisecond)
		claims, polls := st.claims.Load(), st.hasDue.Load()
		require.Eventually(t, func() bool { return st.hasDue.Load() >= polls+5 }, 10*time.Second, 5*time.Millisecond)
		require.LessOrEqual(t, st.claims.Load(), claims+1, "claims while only a parked key's rows were pending")
		require.Equal(t, int64(2), pending(t, db, ""), "the parked row and the one behind it")
	})
}

// Where another forwarder takes the rows that notifications announce, a
// forwarder woken by notifications alone claims once in vain, then asks
// HasDue first; when HasDue finds a row again, it claims it.
func TestForwarder_NotificationsForRowsTakenElsewhereCostHasDue(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.Postgres)
	st := &countingStore{Store: newStore(t, db, gormstore.Config{}), notify: make(chan func(), 1)}
	pub := newRecordingPublisher()
	f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{PollInterval: time.Minute}))
	require.NoError(t, err)
	runForwarder(t, f)
	notify := <-st.notify
	require.Eventually(t, func() bool { return st.empty.Load() == 1 }, 10*time.Second, time.Millisecond) // Run's first claim
	other, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)
	reaction := func() {
		t.Helper()
		before := st.hasDue.Load() + st.claims.Load()
		notify()
		require.Eventually(t, func() bool { return st.hasDue.Load()+st.claims.Load() > before }, 10*time.Second, time.Millisecond)
	}
	const rounds = 10
	for i := range rounds {
		fill(t, db, st, "orders", 1, 1)
		c, err := other.Claim(context.Background(), outbox.ClaimParams{Limit: 10})
		require.NoError(t, err)
		require.Len(t, c.Rows(), 1, "round %d", i)
		require.NoError(t, c.Finish(context.Background(), []int64{c.Rows()[0].ID}, nil))
		reaction()
	}
	require.Equal(t, int64(2), st.empty.Load(), "claims in vain: Run's first, and the first notification's")
	require.Equal(t, int64(rounds-1), st.hasDue.Load(), "the other notifications asked HasDue")

	fill(t, db, st, "orders", 1, 1)
	reaction()
	require.Len(t, pub.waitUnique(t, 1, 10*time.Second), 1, "a row nobody took is relayed")
}

// A publisher that cannot reach its broker marks its errors with
// ErrPublisherUnavailable: with one key pending, far past MaxAttempts,
// nothing is parked, the batches are outages, and the event goes out once
// the broker is back.
func TestForwarder_UnavailablePublisherParksNothing(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		fill(t, db, st, "orders", 1, 1)
		var down atomic.Bool
		down.Store(true)
		var attempts, outages atomic.Int32
		pub := newRecordingPublisher()
		pub.fail = func(string, seqEvent) error {
			if down.Load() {
				attempts.Add(1)
				return outbox.Unavailable(errors.New("dial tcp 127.0.0.1:5672: connect: connection refused"))
			}
			return nil
		}
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{
			MaxAttempts: 2, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
			PollInterval: 5 * time.Millisecond,
			OnBatch: func(b outbox.BatchInfo) {
				if b.Outage {
					outages.Add(1)
				}
			},
		}))
		require.NoError(t, err)
		runForwarder(t, f)
		require.Eventually(t, func() bool {
			stats, err := st.Stats(context.Background())
			return attempts.Load() >= 8 || err == nil && stats.Failed > 0
		}, 20*time.Second, 5*time.Millisecond)
		stats, err := st.Stats(context.Background())
		require.NoError(t, err)
		require.Zero(t, stats.Failed, "a row was parked while the publisher was unavailable")
		require.EqualValues(t, 1, stats.Pending)
		require.Positive(t, outages.Load(), "no batch was taken for an outage")

		down.Store(false)
		got := pub.waitUnique(t, 1, 10*time.Second)
		require.Equal(t, "k00", got[0].ev.Key)
	})
}

func TestUnavailable(t *testing.T) {
	t.Parallel()
	require.NoError(t, outbox.Unavailable(nil))
	base := errors.New("connection refused")
	err := outbox.Unavailable(fmt.Errorf("publish: %w", base))
	require.Equal(t, "publish: connection refused", err.Error())
	require.ErrorIs(t, err, base)
	require.ErrorIs(t, err, outbox.ErrPublisherUnavailable)
	require.Equal(t, err, outbox.Unavailable(err), "marking twice wraps once")
}
