package bench_test

import (
	"context"
	"errors"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"github.com/txoutbox/txoutbox/walrelay"
	"gorm.io/gorm"
)

// The load of BenchmarkCommitToPublish.
const (
	loadRate      = 1000             // commands per second
	loadDuration  = 10 * time.Second // measured load
	warmUp        = time.Second      // load before measuring, not counted
	producers     = 8                // concurrent dispatchers
	idleDuration  = 10 * time.Second // idle window for idle-queries/s
	idleSettle    = 200 * time.Millisecond
	arrivalWindow = time.Minute // the most the relay may lag behind the load
)

// latencyRig is one relay under test, wired to the middleware.
type latencyRig struct {
	store       outbox.Store                       // what the middleware saves with
	afterCommit func(middleware.AfterCommitParams) // nil when the relay cannot be woken
	run         func(ctx context.Context) error    // the relay, until ctx ends
	ready       func()                             // waits until the relay polls; may be nil
	stop        func() error                       // extra stop step after ctx ends; may be nil
	counter     *queryCounter                      // the relay's statements
}

// BenchmarkCommitToPublish dispatches loadRate commands/s for loadDuration
// through Transactional (producers concurrent dispatchers, one event per
// command, 50 partition keys) and measures the latency from the return of
// the command's commit (the first AfterCommit hook) to the GoChannel
// subscriber. Then, with nothing pending, it counts for idleDuration the
// statements the relay sends to PostgreSQL, at the pgx driver of the
// relay's own pool. others-cpu-% is the share of the machine that other
// processes used during the load: a run is clean only when it is near 0.
// Run it with -benchtime 1x.
//
// backend=native-wal writes the events in gormstore's WAL mode and relays
// them with walrelay from a slot that has just streamed; the relay sends
// no statements (its status updates go over the replication connection),
// so its query counts are 0.
func BenchmarkCommitToPublish(b *testing.B) {
	cases := []struct {
		name  string
		setup func(b *testing.B, db *gorm.DB, schema string, s *sink) latencyRig
	}{
		{"backend=native", nativeRig},
		{"backend=watermill-sql-forwarder", stockRig},
		{"backend=native-wal", walRig},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			var all []time.Duration
			var idle, load counts
			var idleTime time.Duration
			var commands int
			var loadTime time.Duration
			var cpu cpuSample
			for range b.N {
				b.StopTimer()
				r := measureLatency(b, bc.setup)
				all = append(all, r.latencies...)
				idle.statements += r.idle.statements
				idle.roundTrips += r.idle.roundTrips
				idle.transactions += r.idle.transactions
				idleTime += r.idleTime
				load.statements += r.load.statements
				commands += r.commands
				loadTime += r.loadTime
				cpu.others += r.cpu.others
			}
			slices.Sort(all)
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
			b.ReportMetric(ms(percentile(all, 0.50)), "p50-ms")
			b.ReportMetric(ms(percentile(all, 0.99)), "p99-ms")
			b.ReportMetric(ms(all[len(all)-1]), "max-ms")
			b.ReportMetric(float64(commands)/loadTime.Seconds(), "cmds/s")
			b.ReportMetric(float64(load.statements)/float64(commands), "queries/event")
			b.ReportMetric(float64(idle.statements)/idleTime.Seconds(), "idle-queries/s")
			b.ReportMetric(float64(idle.roundTrips)/idleTime.Seconds(), "idle-roundtrips/s")
			b.ReportMetric(float64(idle.transactions)/idleTime.Seconds(), "idle-xacts/s")
			b.ReportMetric(cpu.othersShare(loadTime), "others-cpu-%")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// percentile returns the p-quantile of sorted (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(len(sorted))*p)) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// nativeRig is outbox.Forwarder on gormstore with default settings, woken
// by the middleware's AfterCommit and by its LISTEN connection. The relay
// has its own counted pool, as a relay in another process would. The
// table is schema-qualified only so that its notification channel is
// private to this benchmark: with the default name every test schema in
// the database shares the channel "txoutbox_outbox", and other tests'
// commits would wake this relay while it should be idle.
func nativeRig(b *testing.B, db *gorm.DB, schema string, s *sink) latencyRig {
	cfg := gormstore.Config{Table: schema + "." + gormstore.DefaultTable}
	store, err := gormstore.New(db, cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := store.Migrate(context.Background()); err != nil {
		b.Fatal(err)
	}
	_, relayDB, qc := openPool(b, schema, nil)
	relayStore, err := gormstore.New(relayDB, cfg)
	if err != nil {
		b.Fatal(err)
	}
	slogger, _ := newLogs(b)
	fw, err := outbox.NewForwarder(relayStore, s.pubSub, outbox.ForwarderConfig{Logger: slogger})
	if err != nil {
		b.Fatal(err)
	}
	return latencyRig{
		store:       store,
		afterCommit: func(middleware.AfterCommitParams) { fw.Wake() },
		run:         fw.Run,
		counter:     qc,
	}
}

// walRig is gormstore's WAL mode, relayed by walrelay at its defaults
// from a slot of the benchmark's own that has just streamed.
func walRig(b *testing.B, db *gorm.DB, _ string, s *sink) latencyRig {
	cfg := walBenchConfig(b)
	warmSlot(b, cfg)
	store, err := gormstore.New(db, gormstore.Config{WAL: &gormstore.WALConfig{Slot: cfg.Slot, Prefix: cfg.Prefix}})
	if err != nil {
		b.Fatal(err)
	}
	r, err := walrelay.NewRelay(testdb.URL(), s.pubSub, cfg)
	if err != nil {
		b.Fatal(err)
	}
	return latencyRig{store: store, run: r.Run, counter: &queryCounter{}}
}

// stockRig is the stock path: events written by a watermill-sql/v3
// Publisher on the command's transaction, wrapped by components/forwarder's
// Publisher, relayed by Watermill's forwarder polling every 10 ms on its
// own counted pool.
func stockRig(b *testing.B, _ *gorm.DB, schema string, s *sink) latencyRig {
	_, wlog := newLogs(b)
	relaySQL, _, qc := openPool(b, schema, nil)
	fwd := newStockForwarder(b, relaySQL, s.pubSub, wlog)
	return latencyRig{
		store: watermillSQLStore{wlog: wlog},
		run:   fwd.Run,
		// The forwarder creates its table when it subscribes, before it
		// reports running; commands write to that table.
		ready:   func() { <-fwd.Running() },
		stop:    fwd.Close,
		counter: qc,
	}
}

// latencyResult is one run of measureLatency.
type latencyResult struct {
	latencies []time.Duration
	commands  int
	loadTime  time.Duration
	load      counts // relay statements during the measured load
	idle      counts
	idleTime  time.Duration
	cpu       cpuSample // during the load
}

// measureLatency runs one load + idle cycle on a fresh schema.
func measureLatency(b *testing.B, setup func(b *testing.B, db *gorm.DB, schema string, s *sink) latencyRig) latencyResult {
	db, schema := testdb.OpenPostgres(b)
	var (
		sent, recv sync.Map // message UUID -> time.Time
		measuring  atomic.Bool
		measured   atomic.Int64 // messages received while measuring
	)
	s := newSink(b, -1, func(m *message.Message) {
		if measuring.Load() {
			recv.Store(m.UUID, time.Now())
			measured.Add(1)
		}
	})
	rig := setup(b, db, schema, s)

	hooks := []func(middleware.AfterCommitParams){func(p middleware.AfterCommitParams) {
		if measuring.Load() {
			sent.Store(p.Records[0].Message.UUID, time.Now())
		}
	}}
	if rig.afterCommit != nil {
		hooks = append(hooks, rig.afterCommit)
	}
	tm, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: rig.store, AfterCommit: hooks})
	if err != nil {
		b.Fatal(err)
	}
	cmdBus := bus.New(tm.Middleware())
	if err := bus.Register(cmdBus, func(ctx context.Context, cmd PlaceOrder) error {
		return outbox.Emit(ctx, newOrder(cmd.N))
	}); err != nil {
		b.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- rig.run(ctx) }()
	defer func() {
		cancel()
		if rig.stop != nil {
			if err := rig.stop(); err != nil {
				b.Errorf("stop relay: %v", err)
			}
		}
		if err := <-runErr; err != nil {
			b.Errorf("relay Run: %v", err)
		}
	}()
	if rig.ready != nil {
		rig.ready()
	}

	// Warm-up: connections, statement caches, the relay's first batches.
	next := 0
	n, _ := produce(b, cmdBus, &next, int(warmUp.Seconds()*loadRate))
	waitFor(b, arrivalWindow, func() bool { return s.received.Load() >= int64(n) })

	cpu := sampleCPU()
	runtime.GC()
	measuring.Store(true)
	before := rig.counter.snapshot()
	b.StartTimer()
	n, loadTime := produce(b, cmdBus, &next, int(loadDuration.Seconds()*loadRate))
	waitFor(b, arrivalWindow, func() bool { return measured.Load() >= int64(n) })
	b.StopTimer()
	measuring.Store(false)
	load := rig.counter.snapshot().sub(before)
	loadCPU := sampleCPU().sub(cpu)

	time.Sleep(idleSettle)
	idleStart, idleBefore := time.Now(), rig.counter.snapshot()
	time.Sleep(idleDuration)
	idle, idleTime := rig.counter.snapshot().sub(idleBefore), time.Since(idleStart)

	res := latencyResult{commands: n, loadTime: loadTime, load: load, idle: idle, idleTime: idleTime, cpu: loadCPU}
	early := 0
	sent.Range(func(k, v any) bool {
		r, ok := recv.Load(k)
		if !ok {
			b.Fatalf("message %v committed but never received", k)
		}
		d := r.(time.Time).Sub(v.(time.Time))
		if d < 0 {
			// Received before the commit call returned (the NOTIFY woke
			// the relay first): latency 0.
			early++
			d = 0
		}
		res.latencies = append(res.latencies, d)
		return true
	})
	if len(res.latencies) != n {
		b.Fatalf("measured %d latencies for %d commands", len(res.latencies), n)
	}
	if early > 0 {
		b.Logf("%d of %d messages arrived before their commit call returned", early, n)
	}
	return res
}

// produce dispatches count commands at loadRate from producers goroutines,
// paced from one schedule, and returns how many it dispatched and how long
// that took. It fails b on the first dispatch error.
func produce(b *testing.B, cmdBus *bus.Bus, next *int, count int) (int, time.Duration) {
	jobs := make(chan int, count)
	var (
		wg       sync.WaitGroup
		firstErr atomic.Pointer[error]
	)
	for range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := cmdBus.Dispatch(context.Background(), PlaceOrder{N: i}); err != nil {
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	interval := time.Second / loadRate
	start := time.Now()
	for i := range count {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		jobs <- *next + i
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	*next += count
	if p := firstErr.Load(); p != nil {
		b.Fatalf("dispatch: %v", *p)
	}
	return count, elapsed
}

// waitFor polls cond every millisecond until it holds, failing b after
// timeout.
func waitFor(b *testing.B, timeout time.Duration, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatal(errors.New("timed out waiting for the relay"))
		}
		time.Sleep(time.Millisecond)
	}
}
