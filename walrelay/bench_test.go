package walrelay_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/walmsg"
	"github.com/txoutbox/txoutbox/outbox"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRelayBacklog relays a backlog of 100,000 one-event commands
// (transactions of 1,000 commands, 10 partition keys) to a GoChannel and
// reports events per second and the process's CPU time per event. Run it
// with -benchtime=1x: each iteration relays the whole backlog.
func BenchmarkRelayBacklog(b *testing.B) {
	const events, perTx, keys = 100_000, 1_000, 10
	for b.Loop() {
		b.StopTimer()
		conn := connect(b)
		cfg := setup(b, conn)
		cfg.Forwarder.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		cfg.Forwarder.BatchSize = 0 // the default
		cfg.StatusInterval = 0
		contents := make([][]byte, keys)
		for k := range contents {
			m := message.NewMessage(outbox.NewUUID(), []byte(`{"order_id":"7c1f","amount":1999,"currency":"EUR"}`))
			m.Metadata = message.Metadata{"name": "OrderPlaced", "partition_key": fmt.Sprintf("customer-%d", k), "command": "PlaceOrder",
				"correlation_id": outbox.NewUUID(), "causation_id": outbox.NewUUID(), "created_at": "2026-12-04T18:00:00.123456789Z"}
			c, err := walmsg.Encode([]outbox.Record{{Topic: topic, PartitionKey: fmt.Sprintf("customer-%d", k), Message: m}})
			require.NoError(b, err)
			contents[k] = c
		}
		for range events / perTx {
			_, err := conn.Exec(context.Background(), "SELECT count(pg_logical_emit_message(true, $1, ($2::bytea[])[1 + g % $3])) FROM generate_series(1, $4) g", cfg.Prefix, contents, keys, perTx)
			require.NoError(b, err)
		}
		pub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true, OutputChannelBuffer: 1024}, watermill.NopLogger{})
		msgs, err := pub.Subscribe(context.Background(), topic)
		require.NoError(b, err)
		got := make(chan struct{})
		go func() {
			n := 0
			for m := range msgs {
				m.Ack()
				if n++; n == events {
					close(got)
				}
			}
		}()
		cpu0, t0 := cpuTime(), time.Now()
		b.StartTimer()
		stop := start(b, pub, cfg)
		<-got
		b.StopTimer()
		elapsed, cpu := time.Since(t0), cpuTime()-cpu0
		stop()
		require.NoError(b, pub.Close())
		b.ReportMetric(float64(events)/elapsed.Seconds(), "events/s")
		b.ReportMetric(float64(cpu.Microseconds())/events, "cpu-µs/event")
		b.StartTimer()
	}
}
