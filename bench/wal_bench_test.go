package bench_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/internal/walmsg"
	"github.com/txoutbox/txoutbox/outbox"
	"github.com/txoutbox/txoutbox/walrelay"
)

// walFillBatch is the frames one fill statement emits, in one transaction.
const walFillBatch = 1000

// walBenchConfig creates a slot and publication of the benchmark's own,
// dropped when tb ends, and returns the relay's config.
func walBenchConfig(tb testing.TB) walrelay.Config {
	tb.Helper()
	id := make([]byte, 5)
	_, _ = rand.Read(id)
	name := "txo_bench_" + hex.EncodeToString(id)
	slogger, _ := newLogs(tb)
	cfg := walrelay.Config{Slot: name, Publication: name, Prefix: "txoutbox-bench-" + name, Forwarder: outbox.ForwarderConfig{Logger: slogger}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := walrelay.Setup(ctx, testdb.URL(), cfg); err != nil {
		tb.Fatalf("walrelay.Setup (the WAL relay needs wal_level=logical: run scripts/ensure-services.sh postgres): %v", err)
	}
	tb.Cleanup(func() {
		conn := walConn(tb)
		defer conn.Close(context.Background())
		deadline := time.Now().Add(15 * time.Second)
		for {
			_, err := conn.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", name)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond) // the walsender may still be exiting
		}
		_, _ = conn.Exec(context.Background(), "DROP PUBLICATION IF EXISTS "+name)
	})
	return cfg
}

func walConn(tb testing.TB) *pgx.Conn {
	tb.Helper()
	conn, err := pgx.Connect(context.Background(), testdb.URL())
	if err != nil {
		tb.Fatal(err)
	}
	return conn
}

// fillWAL emits events 1..n as logical decoding messages of one event
// each, in commit order, walFillBatch per transaction: the messages the
// WAL mode writes for commands of one event, with the payload of newOrder(i)
// and the metadata keys the outbox.Encoder sets.
func fillWAL(tb testing.TB, prefix string, n int) {
	tb.Helper()
	conn := walConn(tb)
	defer conn.Close(context.Background())
	frames := make([][]byte, 0, walFillBatch)
	flush := func() {
		if len(frames) == 0 {
			return
		}
		if _, err := conn.Exec(context.Background(), "SELECT count(pg_logical_emit_message(true, $1, f)) FROM unnest($2::bytea[]) AS f", prefix, frames); err != nil {
			tb.Fatalf("fill the WAL: %v", err)
		}
		frames = frames[:0]
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for i := 1; i <= n; i++ {
		ev := newOrder(i)
		payload, err := json.Marshal(ev)
		if err != nil {
			tb.Fatal(err)
		}
		cid := outbox.NewUUID()
		msg := message.NewMessage(outbox.NewUUID(), payload)
		msg.Metadata = message.Metadata{
			outbox.MetadataName: eventName, outbox.MetadataCorrelationID: cid, outbox.MetadataCausationID: cid,
			outbox.MetadataCommand: commandName, outbox.MetadataPartitionKey: ev.CustomerID, outbox.MetadataCreatedAt: now,
		}
		frame, err := walmsg.Encode([]outbox.Record{{Topic: eventTopic, PartitionKey: ev.CustomerID, Message: msg}})
		if err != nil {
			tb.Fatal(err)
		}
		frames = append(frames, frame)
		if len(frames) == walFillBatch {
			flush()
		}
	}
	flush()
}

// runRelay runs a relay on cfg into pub until the returned stop is
// called; stop returns Run's error.
func runRelay(tb testing.TB, pub message.Publisher, cfg walrelay.Config) (stop func() error) {
	tb.Helper()
	r, err := walrelay.NewRelay(testdb.URL(), pub, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()
	return func() error { cancel(); return <-errc }
}

// warmSlot streams the slot until it confirmed the server's WAL end as of
// the call, so that its restart position is current: a slot that has not
// streamed for long makes the next reader decode the whole cluster's WAL
// since then before the first message.
func warmSlot(tb testing.TB, cfg walrelay.Config) {
	tb.Helper()
	s := newSink(tb, 1<<62, nil)
	stop := runRelay(tb, s.pubSub, cfg)
	conn := walConn(tb)
	defer conn.Close(context.Background())
	var target string
	if err := conn.QueryRow(context.Background(), "SELECT pg_current_wal_lsn()::text").Scan(&target); err != nil {
		tb.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		var caught bool
		err := conn.QueryRow(context.Background(),
			"SELECT coalesce(confirmed_flush_lsn >= $2::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = $1", cfg.Slot, target).Scan(&caught)
		if err != nil {
			tb.Fatal(err)
		}
		if caught {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatal("the slot did not confirm the WAL end within a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := stop(); err != nil {
		tb.Fatalf("relay: %v", err)
	}
}

// drainWAL writes the backlog as logical decoding messages while no relay
// runs, on a slot whose restart position is current (warmSlot), then
// relays it with walrelay at its defaults into the GoChannel, and returns
// the time from Run until the last message arrived; first is the time to
// the first message (the cold start).
func drainWAL(b *testing.B, events int) drainResult {
	cfg := walBenchConfig(b)
	warmSlot(b, cfg)
	fillWAL(b, cfg.Prefix, events)
	var firstAt atomic.Int64
	s := newSink(b, int64(events), func(*message.Message) {
		if firstAt.Load() == 0 {
			firstAt.CompareAndSwap(0, time.Now().UnixNano())
		}
	})
	runtime.GC()

	cpu := sampleCPU()
	b.StartTimer()
	start := time.Now()
	stop := runRelay(b, s.pubSub, cfg)
	s.wait(b, drainTimeout)
	elapsed := time.Since(start)
	b.StopTimer()
	r := drainResult{elapsed: elapsed, cpu: sampleCPU().sub(cpu), first: time.Duration(firstAt.Load() - start.UnixNano())}
	if err := stop(); err != nil {
		b.Fatalf("relay: %v", err)
	}
	return r
}
