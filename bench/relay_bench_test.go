package bench_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// drainTimeout bounds one drain; a relay slower than this has failed.
const drainTimeout = 10 * time.Minute

// floorBatch is the floor's rows per DELETE, the native forwarder's
// default batch size.
const floorBatch = outbox.DefaultBatchSize

// drainResult is one timed drain: wall time, and the CPU time this process
// and the database server (PostgreSQL or MySQL/MariaDB) used meanwhile.
type drainResult struct {
	elapsed time.Duration
	cpu     cpuSample
	// first is the time to the first message, for the drains that
	// report it (the WAL relay's cold start); 0 otherwise.
	first time.Duration
}

// BenchmarkRelay drains a pre-filled backlog to a GoChannel and reports
// events/s, the CPU time per event of this process (go-cpu-us/event) and
// of all PostgreSQL server processes (pg-cpu-us/event), and this process's
// heap allocations per event (allocs/event). others-cpu-% is the share of
// the machine that other processes used meanwhile: a run is clean only
// when it is near 0. Each iteration is one full drain of a fresh schema, filled and
// settled (VACUUM ANALYZE) with the timer stopped; run it with
// -benchtime 1x.
//
// The backend=native-wal rows write the backlog as logical decoding
// messages (gormstore's WAL mode) while no relay runs, on a slot that has
// just streamed, and drain it with walrelay; first-msg-ms is the time
// from the relay's start to its first message.
//
// The backend=mysql-* rows drain the same backlog from a fresh
// MySQL/MariaDB database (settled with ANALYZE TABLE) and report the
// server's CPU per event as mysql-cpu-us/event in place of
// pg-cpu-us/event: the threads of this process's connections and the
// server's own threads (see sampleMySQLCPU).
func BenchmarkRelay(b *testing.B) {
	cases := []struct {
		name   string
		events int
		drain  func(b *testing.B, events int) drainResult
	}{
		{"backend=native", 50_000, func(b *testing.B, n int) drainResult { return drainNative(b, n, 0) }},
		{"backend=native-batch-1000", 50_000, func(b *testing.B, n int) drainResult { return drainNative(b, n, 1000) }},
		{"backend=watermill-sql-forwarder", 50_000, drainStock},
		{"backend=floor", 50_000, func(b *testing.B, n int) drainResult { return drainFloor(b, n, floorOptions{}) }},
		{"backend=floor-sync-commit", 50_000, func(b *testing.B, n int) drainResult { return drainFloor(b, n, floorOptions{syncCommit: true}) }},
		{"backend=floor-and-sink", 50_000, func(b *testing.B, n int) drainResult { return drainFloor(b, n, floorOptions{sink: true}) }},
		{"backend=native-200k", 200_000, func(b *testing.B, n int) drainResult { return drainNative(b, n, 0) }},
		{"backend=native-claims", 50_000, func(b *testing.B, n int) drainResult { return drainClaims(b, n, false) }},
		{"backend=native-claims-and-sink", 50_000, func(b *testing.B, n int) drainResult { return drainClaims(b, n, true) }},
		{"backend=mysql-native", 50_000, func(b *testing.B, n int) drainResult { return drainNativeOn(b, nativeStoreMySQL, n, 0) }},
		{"backend=mysql-watermill-sql-forwarder", 50_000, drainStockMySQL},
		{"backend=mysql-floor", 50_000, drainFloorMySQL},
		{"backend=mysql-native-200k", 200_000, func(b *testing.B, n int) drainResult { return drainNativeOn(b, nativeStoreMySQL, n, 0) }},
		{"backend=native-wal", 50_000, drainWAL},
		{"backend=native-wal-200k", 200_000, drainWAL},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) { reportDrains(b, bc.events, bc.drain) })
	}
}

// BenchmarkRelayBacklog drains backlogs of 1,000 to 100,000 events with
// the native forwarder and with Watermill's stock forwarder, as
// BenchmarkRelay does: the drain rate against the backlog size. Run it
// with -benchtime 1x.
func BenchmarkRelayBacklog(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 50_000, 100_000} {
		b.Run(fmt.Sprintf("backlog=%d/backend=native", n), func(b *testing.B) {
			reportDrains(b, n, func(b *testing.B, n int) drainResult { return drainNative(b, n, 0) })
		})
		b.Run(fmt.Sprintf("backlog=%d/backend=watermill-sql-forwarder", n), func(b *testing.B) {
			reportDrains(b, n, drainStock)
		})
	}
}

// reportDrains runs drain b.N times on backlogs of events and reports the
// rate and the CPU per event.
func reportDrains(b *testing.B, events int, drain func(b *testing.B, events int) drainResult) {
	var total, first time.Duration
	var cpu cpuSample
	for range b.N {
		b.StopTimer()
		r := drain(b, events)
		total += r.elapsed
		first += r.first
		cpu.goCPU += r.cpu.goCPU
		cpu.pgCPU += r.cpu.pgCPU
		cpu.dbCPU += r.cpu.dbCPU
		cpu.mysql = cpu.mysql || r.cpu.mysql
		cpu.mallocs += r.cpu.mallocs
		cpu.others += r.cpu.others
	}
	n := float64(events) * float64(b.N)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / n }
	b.ReportMetric(n/total.Seconds(), "events/s")
	b.ReportMetric(float64(total.Nanoseconds())/n, "ns/event")
	b.ReportMetric(us(cpu.goCPU), "go-cpu-us/event")
	if cpu.mysql {
		b.ReportMetric(us(cpu.dbCPU), "mysql-cpu-us/event")
	} else {
		b.ReportMetric(us(cpu.pgCPU), "pg-cpu-us/event")
	}
	b.ReportMetric(float64(cpu.mallocs)/n, "allocs/event")
	b.ReportMetric(cpu.othersShare(total), "others-cpu-%")
	if first > 0 {
		b.ReportMetric(float64(first)/float64(time.Millisecond)/float64(b.N), "first-msg-ms")
	}
	b.ReportMetric(0, "ns/op")
}

// drainNative relays the backlog with outbox.Forwarder on gormstore, with
// default settings but batchSize (0: the default), and returns the time
// from Run until Run returned after the last message arrived (its last
// batch finished).
func drainNative(b *testing.B, events, batchSize int) drainResult {
	return drainNativeOn(b, nativeStore, events, batchSize)
}

// drainNativeOn is drainNative on the database and store that open
// returns: nativeStore (PostgreSQL) or nativeStoreMySQL.
func drainNativeOn(b *testing.B, open func(testing.TB, gormstore.Config) (*gorm.DB, *gormstore.Store), events, batchSize int) drainResult {
	db, gs := open(b, gormstore.Config{})
	store := &timedStore{Store: gs}
	fillNative(b, db, store.Table(), events)
	slogger, _ := newLogs(b)
	s := newSink(b, int64(events), nil)
	fw, err := outbox.NewForwarder(store, s.pubSub, outbox.ForwarderConfig{BatchSize: batchSize, Logger: slogger})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sample := cpuSampler(b, db)
	runtime.GC()

	cpu := sample()
	b.StartTimer()
	start := time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- fw.Run(ctx) }()
	s.wait(b, drainTimeout)
	cancel()
	err = <-runErr
	elapsed := time.Since(start)
	b.StopTimer()
	r := drainResult{elapsed: elapsed, cpu: sample().sub(cpu)}

	if err != nil {
		b.Fatalf("Run: %v", err)
	}
	if left := testdb.Count(b, db, store.Table(), ""); left != 0 {
		b.Fatalf("%d rows left in the outbox after %d deliveries", left, s.received.Load())
	}
	b.Log(store.summary())
	return r
}

// cpuSampler returns the sampler of a drain on db: sampleCPU on
// PostgreSQL, sampleMySQLCPU on MySQL/MariaDB.
func cpuSampler(tb testing.TB, db *gorm.DB) func() cpuSample {
	if !isMySQL(db) {
		return sampleCPU
	}
	sqlDB, err := db.DB()
	if err != nil {
		tb.Fatal(err)
	}
	return func() cpuSample { return sampleMySQLCPU(tb, sqlDB) }
}

// drainClaims drains the native backlog through the store alone: claims of
// the forwarder's default batch size, each finished as delivered at once,
// one after another on one goroutine, nothing decoded or published. It
// shows what the native claims cost PostgreSQL next to the floor when
// nothing else runs beside them. With withSink, as many ready messages are
// published to the GoChannel at the same time, as drainFloor does: the
// bound of a relay with per-key ordered claims that does nothing else, and
// the time runs until both are done.
func drainClaims(b *testing.B, events int, withSink bool) drainResult {
	db, store := nativeStore(b, gormstore.Config{})
	fillNative(b, db, store.Table(), events)
	load := newSinkLoad(b, events, withSink)
	ctx := context.Background()
	runtime.GC()

	cpu := sampleCPU()
	b.StartTimer()
	start := time.Now()
	load.start()
	total := 0
	for total < events {
		c, err := store.Claim(ctx, outbox.ClaimParams{Limit: outbox.DefaultBatchSize})
		if err != nil {
			b.Fatal(err)
		}
		rows := c.Rows()
		if len(rows) == 0 {
			_ = c.Release(ctx)
			break
		}
		ids := make([]int64, len(rows))
		for i, r := range rows {
			ids[i] = r.ID
		}
		if err := c.Finish(ctx, ids, nil); err != nil {
			b.Fatal(err)
		}
		total += len(rows)
	}
	if err := load.wait(b); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	r := drainResult{elapsed: elapsed, cpu: sampleCPU().sub(cpu)}
	if total != events {
		b.Fatalf("claimed %d of %d rows", total, events)
	}
	return r
}

// drainStock relays the backlog with Watermill's stock forwarder reading
// the watermill-sql/v3 table, and returns the time from Run until the last
// message arrived. The forwarder is closed after the timer stops; its last
// offset ack may be rolled back by the close, which is why every
// iteration uses a fresh schema.
func drainStock(b *testing.B, events int) drainResult {
	db, schema := testdb.OpenPostgres(b)
	sqlDB, err := db.DB()
	if err != nil {
		b.Fatal(err)
	}
	_, wlog := newLogs(b)
	fillStock(b, schema, wlog, events)
	settle(b, db, stockTable)
	s := newSink(b, int64(events), nil)
	fwd := newStockForwarder(b, sqlDB, s.pubSub, wlog)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runtime.GC()

	cpu := sampleCPU()
	b.StartTimer()
	start := time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- fwd.Run(ctx) }()
	s.wait(b, drainTimeout)
	elapsed := time.Since(start)
	b.StopTimer()
	r := drainResult{elapsed: elapsed, cpu: sampleCPU().sub(cpu)}

	if err := fwd.Close(); err != nil {
		b.Fatalf("close stock forwarder: %v", err)
	}
	if err := <-runErr; err != nil {
		b.Fatalf("stock forwarder Run: %v", err)
	}
	return r
}

// floorOptions are the variants of drainFloor.
type floorOptions struct {
	// syncCommit makes each batch wait for its WAL flush.
	syncCommit bool
	// sink publishes as many ready messages to the GoChannel sink as the
	// floor deletes rows, at the same time, in Publish calls of floorBatch:
	// the database's and the sink's work with nothing between them and
	// nothing waiting for the other. No relay that publishes to this sink
	// can drain faster on the machine.
	sink bool
}

// drainFloor deletes the native backlog in batches of floorBatch with
// DELETE ... RETURNING on one connection, reads the returned rows, and
// publishes nothing: what PostgreSQL and pgx alone cost. Like the native
// relay's transactions it runs with synchronous_commit off, unless
// o.syncCommit. With o.sink the time runs until both the rows are deleted
// and the sink has received every message.
func drainFloor(b *testing.B, events int, o floorOptions) drainResult {
	db, store := nativeStore(b, gormstore.Config{})
	ctx := context.Background()
	t := store.Table()
	fillNative(b, db, t, events)
	load := newSinkLoad(b, events, o.sink)
	sqlDB, err := db.DB()
	if err != nil {
		b.Fatal(err)
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	query := `DELETE FROM ` + t + ` WHERE id = ANY(ARRAY(
	SELECT id FROM ` + t + ` ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
RETURNING id, uuid, topic, partition_key, payload, metadata, attempts`

	var r drainResult
	total := 0
	err = conn.Raw(func(dc any) error {
		px := dc.(*stdlib.Conn).Conn()
		if !o.syncCommit {
			if _, err := px.Exec(ctx, "SET synchronous_commit = off"); err != nil {
				return err
			}
		}
		defer func() { _, _ = px.Exec(ctx, "RESET synchronous_commit") }()
		runtime.GC()

		cpu := sampleCPU()
		b.StartTimer()
		start := time.Now()
		load.start()
		for total < events {
			rows, err := px.Query(ctx, query, floorBatch)
			if err != nil {
				return err
			}
			n, err := scanFloor(rows)
			if err != nil {
				return err
			}
			if n == 0 {
				break
			}
			total += n
		}
		if err := load.wait(b); err != nil {
			return err
		}
		elapsed := time.Since(start)
		b.StopTimer()
		r = drainResult{elapsed: elapsed, cpu: sampleCPU().sub(cpu)}
		return nil
	})
	if err != nil {
		b.Fatalf("floor: %v", err)
	}
	if total != events {
		b.Fatalf("floor deleted %d of %d rows", total, events)
	}
	return r
}

// scanFloor reads the returned rows into outbox.Row values, as the relay
// reads its claims, and returns how many there were.
func scanFloor(rows pgx.Rows) (int, error) {
	defer rows.Close()
	out := make([]outbox.Row, 0, floorBatch)
	for rows.Next() {
		var r outbox.Row
		var attempts int32
		if err := rows.Scan(&r.ID, &r.UUID, &r.Topic, &r.PartitionKey, &r.Payload, &r.Metadata, &attempts); err != nil {
			return 0, err
		}
		r.Attempts = int(attempts)
		out = append(out, r)
	}
	return len(out), rows.Err()
}
