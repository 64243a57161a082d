package bench_test

import (
	"encoding/json"
	"runtime"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/outbox"
)

// BenchmarkSink publishes 50,000 ready messages straight to the GoChannel
// sink the relay benchmarks publish to, in Publish calls of 500 (the
// native relay's batch): what the sink alone costs, the ceiling of any
// relay measured with it. Reports events/s, go-cpu-us/event and
// allocs/event.
func BenchmarkSink(b *testing.B) {
	const events = 50_000
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	var total time.Duration
	var cpu cpuSample
	for range b.N {
		b.StopTimer()
		msgs := make([]*message.Message, events)
		for i := range msgs {
			rec, err := enc.Encode(outbox.Entry{Event: newOrder(i + 1), Command: outbox.Command{ID: "c", Name: commandName, CorrelationID: "c"}})
			if err != nil {
				b.Fatal(err)
			}
			msgs[i] = rec.Message
		}
		s := newSink(b, events, nil)
		runtime.GC()

		before := sampleCPU()
		b.StartTimer()
		start := time.Now()
		for i := 0; i < events; i += outbox.DefaultBatchSize {
			if err := s.pubSub.Publish(eventTopic, msgs[i:i+outbox.DefaultBatchSize]...); err != nil {
				b.Fatal(err)
			}
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

// BenchmarkDecodeMetadata measures what the relay pays per row to turn
// the stored JSONB metadata (as PostgreSQL returns it) back into Watermill
// metadata with encoding/json, as outbox.decodeRow does.
func BenchmarkDecodeMetadata(b *testing.B) {
	raw := []byte(`{"name": "OrderPlaced", "command": "PlaceOrder", "created_at": "2026-11-27T14:21:48.123456Z", "causation_id": "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "partition_key": "customer-07", "correlation_id": "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"}`)
	b.ReportAllocs()
	for b.Loop() {
		md := message.Metadata{}
		if err := json.Unmarshal(raw, &md); err != nil {
			b.Fatal(err)
		}
	}
}
