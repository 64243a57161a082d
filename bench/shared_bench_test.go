package bench_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/outbox"
)

// slowPublisher stands for a broker that takes perMessage to accept each
// message: it waits that long for a Publish call's messages, then hands
// them to the sink.
type slowPublisher struct {
	message.Publisher
	perMessage time.Duration
}

func (p slowPublisher) Publish(topic string, msgs ...*message.Message) error {
	time.Sleep(time.Duration(len(msgs)) * p.perMessage)
	return p.Publisher.Publish(topic, msgs...)
}

// sharedEvents is the backlog BenchmarkSharedBacklog drains.
const sharedEvents = 20_000

// BenchmarkSharedBacklog drains a backlog of 20,000 events on 50 keys with
// one and with two forwarders at their defaults, each with a store of its
// own as separate processes would have, into a publisher that takes 50 µs
// per message (20,000 messages/s for one forwarder at most): do more
// forwarders relay a backlog faster when the broker, not the database,
// sets the pace? Reports events/s and the smallest share of the events
// one forwarder published (min-share).
func BenchmarkSharedBacklog(b *testing.B) {
	for _, n := range []int{1, 2} {
		b.Run(fmt.Sprintf("forwarders=%d", n), func(b *testing.B) {
			var total time.Duration
			minShare := 1.0
			for range b.N {
				elapsed, share := drainShared(b, n)
				total += elapsed
				minShare = min(minShare, share)
			}
			b.ReportMetric(float64(sharedEvents)*float64(b.N)/total.Seconds(), "events/s")
			b.ReportMetric(minShare, "min-share")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// drainShared drains the backlog with n forwarders and returns the time
// until the last message arrived and the smallest share of the messages
// one forwarder published.
func drainShared(b *testing.B, n int) (time.Duration, float64) {
	b.StopTimer()
	db, first := nativeStore(b, gormstore.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stores := []*gormstore.Store{first}
	for range n - 1 {
		s, err := gormstore.New(db, gormstore.Config{})
		if err != nil {
			b.Fatal(err)
		}
		stores = append(stores, s)
	}
	fillNative(b, db, stores[0].Table(), sharedEvents)
	s := newSink(b, sharedEvents, nil)
	slogger, _ := newLogs(b)
	published := make([]int, n)
	var fws []*outbox.Forwarder
	for i, st := range stores {
		fw, err := outbox.NewForwarder(st, slowPublisher{s.pubSub, 50 * time.Microsecond}, outbox.ForwarderConfig{
			Logger:  slogger,
			OnBatch: func(info outbox.BatchInfo) { published[i] += info.Published },
		})
		if err != nil {
			b.Fatal(err)
		}
		fws = append(fws, fw)
	}
	b.StartTimer()
	start := time.Now()
	runErr := make(chan error, n)
	for _, fw := range fws {
		go func() { runErr <- fw.Run(ctx) }()
	}
	s.wait(b, drainTimeout)
	elapsed := time.Since(start)
	b.StopTimer()
	cancel()
	for range n {
		if err := <-runErr; err != nil {
			b.Fatal(err)
		}
	}
	share := 1.0
	for _, p := range published {
		share = min(share, float64(p)/sharedEvents)
	}
	return elapsed, share
}
