package bench_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"github.com/txoutbox/txoutbox/retention"
	"gorm.io/gorm"
)

// Sizes of BenchmarkRetention.
const (
	// retentionEvents is the pending backlog drained, as in
	// BenchmarkRelay/backend=native.
	retentionEvents = 50_000
	// retentionKept is the number of delivered rows kept in the table.
	retentionKept = 1_000_000
)

// BenchmarkRetention measures whether delivered rows kept for a retention
// window (gormstore.Config.KeepDelivered) slow the relay. Each iteration
// drains retentionEvents pending events with the native forwarder, as
// BenchmarkRelay/backend=native does but with KeepDelivered, from four
// fresh tables, in an order that rotates per iteration:
//
//	empty     no other rows
//	kept-1M   1,000,000 delivered rows kept (delivered over the last days)
//	cleaning  1,000,000 kept rows, all past retention, that a
//	          retention.Cleaner deletes while the relay drains
//	kept-1M-full-uuid
//	          as kept-1M, with the unique index on uuid over all rows, as
//	          before it became partial (WHERE delivered_at IS NULL): what
//	          kept rows cost when every delivery enters a big random index
//
// It reports each variant's drain rate in events/s over all iterations, its
// ratio to empty (the goal for kept-1M: at least 0.8) over all iterations
// and as the median of the iterations' ratios (robust to a noisy
// neighbour slowing one drain), its mean claim and finish (mark delivered
// and commit) time per batch, and the cleaner's purge rate; it logs one
// line per iteration. The timer runs through the fills, so one iteration
// is the default; -benchtime 5x runs five.
//
//	go test -run '^$' -bench BenchmarkRetention -timeout 60m ./bench/
func BenchmarkRetention(b *testing.B) {
	type variant struct {
		name     string
		kept     int
		clean    bool
		fullUUID bool
		elapsed  time.Duration
		claim    time.Duration
		finish   time.Duration
		batches  int
		purged   int64
		purge    time.Duration
	}
	vs := []*variant{
		{name: "empty"},
		{name: "kept-1M", kept: retentionKept},
		{name: "cleaning", kept: retentionKept, clean: true},
		{name: "kept-1M-full-uuid", kept: retentionKept, fullUUID: true},
	}
	iter := 0
	ratios := make([][]float64, len(vs))
	for b.Loop() {
		rs := make([]keptDrain, len(vs))
		for k := range vs {
			i := (k + iter) % len(vs)
			v := vs[i]
			r := drainKept(b, retentionEvents, v.kept, v.clean, v.fullUUID)
			rs[i] = r
			v.elapsed += r.elapsed
			v.claim += r.claim
			v.finish += r.finish
			v.batches += r.batches
			v.purged += r.purged
			v.purge += r.purge
		}
		var line strings.Builder
		fmt.Fprintf(&line, "iteration %d:", iter+1)
		for i, v := range vs {
			r := rs[i]
			per := func(d time.Duration) float64 {
				return float64(d) / float64(max(r.batches, 1)) / float64(time.Millisecond)
			}
			ratio := rs[0].elapsed.Seconds() / r.elapsed.Seconds()
			ratios[i] = append(ratios[i], ratio)
			fmt.Fprintf(&line, " %s %.0f/s %.2fx (claim %.2f ms, finish %.2f ms);",
				v.name, float64(retentionEvents)/r.elapsed.Seconds(), ratio, per(r.claim), per(r.finish))
		}
		if c := rs[2]; c.purge > 0 {
			fmt.Fprintf(&line, " purged %d rows in %v", c.purged, c.purge.Round(time.Millisecond))
		}
		b.Log(line.String())
		iter++
	}
	rate := func(v *variant) float64 { return float64(retentionEvents*iter) / v.elapsed.Seconds() }
	for i, v := range vs {
		b.ReportMetric(rate(v), v.name+"-events/s")
		b.ReportMetric(float64(v.claim.Microseconds())/float64(max(v.batches, 1)), v.name+"-claim-us/batch")
		b.ReportMetric(float64(v.finish.Microseconds())/float64(max(v.batches, 1)), v.name+"-finish-us/batch")
		if i > 0 {
			b.ReportMetric(rate(v)/rate(vs[0]), v.name+"/empty")
			b.ReportMetric(median(ratios[i]), v.name+"/empty-median")
		}
	}
	if c := vs[2]; c.purge > 0 {
		b.ReportMetric(float64(c.purged)/c.purge.Seconds(), "purged-rows/s")
	}
	b.ReportMetric(0, "ns/op")
}

// median returns the median of xs.
func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// keptDrain is one timed drain of BenchmarkRetention.
type keptDrain struct {
	elapsed time.Duration
	claim   time.Duration // sum over batches
	finish  time.Duration // sum over batches
	batches int
	purged  int64
	purge   time.Duration
}

// drainKept fills a fresh KeepDelivered table with kept delivered rows,
// then events pending ones (fillNative), and relays the pending rows with
// the native forwarder, timing from Run until the last event arrived and
// Run returned, and the claim and finish (mark delivered + commit) time of
// its batches. With clean, a retention.Cleaner purges the kept rows
// (delivered days ago, past its one-hour retention) during the drain.
// With fullUUID the unique index on uuid covers every row, delivered or
// not, as before 000001_create_outbox made it partial.
func drainKept(b *testing.B, events, kept int, clean, fullUUID bool) keptDrain {
	db, gs := nativeStore(b, gormstore.Config{KeepDelivered: true})
	store := &timedStore{Store: gs}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if fullUUID {
		t := store.Table()
		if err := db.Exec(`DROP INDEX ` + t + `_uuid_key`).Error; err != nil {
			b.Fatal(err)
		}
		if err := db.Exec(`CREATE UNIQUE INDEX ` + t + `_uuid_key ON ` + t + ` (uuid)`).Error; err != nil {
			b.Fatal(err)
		}
	}
	fillDelivered(b, db, store.Table(), kept)
	fillNative(b, db, store.Table(), events) // also settles the table
	if got := testdb.Count(b, db, store.Table(), "delivered_at IS NOT NULL"); got != int64(kept) {
		b.Fatalf("%d delivered rows kept, want %d", got, kept)
	}
	slogger, _ := newLogs(b)
	s := newSink(b, int64(events), nil)
	fw, err := outbox.NewForwarder(store, s.pubSub, outbox.ForwarderConfig{Logger: slogger})
	if err != nil {
		b.Fatal(err)
	}
	var cleaner *retention.Cleaner
	if clean {
		cleaner, err = retention.New(retention.Config{
			Outbox:          gs,
			OutboxRetention: time.Hour,
			Logger:          slog.New(slog.DiscardHandler),
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()

	var r keptDrain
	purged := make(chan error, 1)
	start := time.Now()
	if cleaner != nil {
		go func() {
			res, err := cleaner.RunOnce(ctx)
			r.purged, r.purge = res.OutboxDeleted, res.Duration
			purged <- err
		}()
	}
	runErr := make(chan error, 1)
	go func() { runErr <- fw.Run(ctx) }()
	s.wait(b, drainTimeout)
	cancel()
	err = <-runErr
	r.elapsed = time.Since(start)
	if err != nil {
		b.Fatalf("Run: %v", err)
	}
	if cleaner != nil {
		// The cleaner usually finishes first; if not, it stops at ctx's end.
		if err := <-purged; err != nil && ctx.Err() == nil {
			b.Fatalf("cleaner: %v", err)
		}
	}
	if left := testdb.Count(b, db, store.Table(), "delivered_at IS NULL"); left != 0 {
		b.Fatalf("%d rows undelivered after %d deliveries", left, s.received.Load())
	}
	store.mu.Lock()
	for _, bt := range store.batches {
		if bt.rows > 0 {
			r.claim += bt.claim
			r.finish += bt.finish
			r.batches++
		}
	}
	store.mu.Unlock()
	return r
}

// fillDelivered inserts n delivered rows into the native outbox table in
// one statement: events 1..n in fillNative's form, created and delivered
// over the last days, oldest first, as a table kept with KeepDelivered
// holds them. fillNative settles the table afterwards.
func fillDelivered(tb testing.TB, db *gorm.DB, table string, n int) {
	tb.Helper()
	if n == 0 {
		return
	}
	q := `INSERT INTO ` + table + ` (uuid, topic, partition_key, payload, metadata, created_at, next_attempt_at, delivered_at)
SELECT gen_random_uuid()::text, '` + eventTopic + `', 'customer-' || lpad((i % 50)::text, 2, '0'),
	convert_to(` + nativePayloadSQL + `, 'UTF8'),
	jsonb_build_object('name', '` + eventName + `', 'command', '` + commandName + `'),
	ts, ts, ts + interval '50 milliseconds'
FROM generate_series(1, ?) AS i,
	LATERAL (SELECT now() - interval '3 days' + i * ?::bigint * interval '1 microsecond' AS ts) AS t`
	step := (48 * time.Hour / time.Duration(n)).Microseconds()
	if err := db.Exec(q, n, step).Error; err != nil {
		tb.Fatalf("fill %d delivered rows into %s: %v", n, table, err)
	}
}
