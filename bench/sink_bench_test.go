package bench_test

import (
	"runtime"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/outbox"
)

// BenchmarkSink publishes 50,000 ready messages straight to the GoChannel
// sink the relay benchmarks publish to, in Publish calls of 2,000 (the
// native relay's batch): what the sink alone costs, the ceiling of any
// relay measured with it. Reports events/s, go-cpu-us/event and
// allocs/event.
func BenchmarkSink(b *testing.B) {
	const events = 50_000
	var total time.Duration
	var cpu cpuSample
	for range b.N {
		b.StopTimer()
		msgs := readyMessages(b, events)
		s := newSink(b, events, nil)
		runtime.GC()

		before := sampleCPU()
		b.StartTimer()
		start := time.Now()
		if err := publishBatches(s, msgs); err != nil {
			b.Fatal(err)
		}
		s.wait(b, drainTimeout)
		total += time.Since(start)
		b.StopTimer()
		c := sampleCPU().sub(before)
		cpu.goCPU += c.goCPU
		cpu.mallocs += c.mallocs
	}
	n := float64(events) * float64(b.N)
	b.ReportMetric(n/total.Seconds(), "events/s")
	b.ReportMetric(float64(cpu.goCPU)/float64(time.Microsecond)/n, "go-cpu-us/event")
	b.ReportMetric(float64(cpu.mallocs)/n, "allocs/event")
	b.ReportMetric(0, "ns/op")
}

// readyMessages returns n messages as the encoder makes them from the
// benchmarks' events, ready to publish.
func readyMessages(tb testing.TB, n int) []*message.Message {
	tb.Helper()
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	msgs := make([]*message.Message, n)
	for i := range msgs {
		rec, err := enc.Encode(outbox.Entry{Event: newOrder(i + 1), Command: outbox.Command{ID: "c", Name: commandName, CorrelationID: "c"}})
		if err != nil {
			tb.Fatal(err)
		}
		msgs[i] = rec.Message
	}
	return msgs
}

// publishBatches publishes msgs to the sink in Publish calls of the
// forwarder's default batch size.
func publishBatches(s *sink, msgs []*message.Message) error {
	for i := 0; i < len(msgs); i += outbox.DefaultBatchSize {
		if err := s.pubSub.Publish(eventTopic, msgs[i:min(i+outbox.DefaultBatchSize, len(msgs))]...); err != nil {
			return err
		}
	}
	return nil
}

// sinkLoad publishes ready messages to a GoChannel sink beside a drain, so
// that the drain's work and the sink's overlap. A nil *sinkLoad does
// nothing.
type sinkLoad struct {
	s    *sink
	msgs []*message.Message
	err  chan error
}

// newSinkLoad prepares n ready messages and a sink for them, or returns
// nil when on is false.
func newSinkLoad(tb testing.TB, n int, on bool) *sinkLoad {
	if !on {
		return nil
	}
	return &sinkLoad{s: newSink(tb, int64(n), nil), msgs: readyMessages(tb, n), err: make(chan error, 1)}
}

// start publishes the messages from a goroutine of its own.
func (l *sinkLoad) start() {
	if l != nil {
		go func() { l.err <- publishBatches(l.s, l.msgs) }()
	}
}

// wait returns once every message was published and received.
func (l *sinkLoad) wait(tb testing.TB) error {
	if l == nil {
		return nil
	}
	if err := <-l.err; err != nil {
		return err
	}
	l.s.wait(tb, drainTimeout)
	return nil
}
