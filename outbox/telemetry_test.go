package outbox_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

var setPropagator sync.Once

var errPoison = errors.New("rejected by broker")

// usePropagator installs the W3C trace-context and baggage propagator as
// the global one, as an application using OpenTelemetry does. Tests that do
// not create spans or baggage are unaffected by it.
func usePropagator() {
	setPropagator.Do(func() {
		otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	})
}

type traced struct{ ID string }
type tracedEvent struct{ ID string }

func TestTelemetry_TraceRunsFromCommandToConsumer(t *testing.T) {
	t.Parallel()
	usePropagator()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db := testdb.Open(t, testdb.Postgres)
	st := newStore(t, db, gormstore.Config{})

	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	pub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	received, err := pub.Subscribe(ctx, "tracedEvent")
	require.NoError(t, err)
	fwd, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{
		TracerProvider: tp, MeterProvider: mp, PollInterval: 10 * time.Millisecond,
	}))
	require.NoError(t, err)
	runForwarder(t, fwd)

	tm, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: st})
	require.NoError(t, err)
	b := bus.New(tm.Middleware())
	require.NoError(t, bus.Register(b, func(ctx context.Context, c traced) error {
		return outbox.Emit(ctx, tracedEvent(c))
	}))

	// The command runs under a span (e.g. an HTTP request's) and baggage.
	member, err := baggage.NewMember("tenant", "acme")
	require.NoError(t, err)
	bag, err := baggage.New(member)
	require.NoError(t, err)
	cmdCtx, cmdSpan := tp.Tracer("app").Start(baggage.ContextWithBaggage(ctx, bag), "POST /orders")
	require.NoError(t, b.Dispatch(cmdCtx, traced{ID: "o-1"}))
	cmdSpan.End()

	var consumerSpan trace.Span
	select {
	case msg := <-received:
		// The consumer continues the trace from the message metadata.
		cctx := otel.GetTextMapPropagator().Extract(context.Background(), propagation.MapCarrier(msg.Metadata))
		require.Equal(t, "acme", baggage.FromContext(cctx).Member("tenant").Value(), "baggage travels with the event")
		_, consumerSpan = tp.Tracer("consumer").Start(cctx, "consume tracedEvent")
		consumerSpan.End()
		msg.Ack()
	case <-time.After(10 * time.Second):
		t.Fatal("event not relayed")
	}
	require.Equal(t, cmdSpan.SpanContext().TraceID(), consumerSpan.SpanContext().TraceID(),
		"the consumer's span is in the command's trace")

	ended := func(name string) sdktrace.ReadOnlySpan {
		for _, s := range spans.Ended() {
			if s.Name() == name {
				return s
			}
		}
		return nil
	}
	require.Eventually(t, func() bool { return ended("publish tracedEvent") != nil }, 10*time.Second, 10*time.Millisecond,
		"a publish span was recorded")
	publish := ended("publish tracedEvent")
	require.Equal(t, trace.SpanKindProducer, publish.SpanKind())
	require.Equal(t, cmdSpan.SpanContext().SpanID(), publish.Parent().SpanID(), "publish span is a child of the command's span")
	require.Equal(t, publish.SpanContext().SpanID(), ended("consume tracedEvent").Parent().SpanID(),
		"the consumer continues from the publish span")

	// Metrics: published per topic, batch histograms, and the outbox gauges.
	require.Eventually(t, func() bool { return pending(t, db, "") == 0 }, 10*time.Second, 10*time.Millisecond)
	var rm metricdata.ResourceMetrics
	require.Eventually(t, func() bool {
		rm = metricdata.ResourceMetrics{}
		require.NoError(t, reader.Collect(ctx, &rm))
		return sumOf(rm, "txoutbox.relay.published", "tracedEvent") == 1
	}, 10*time.Second, 20*time.Millisecond)
	names := metricNames(rm)
	for _, want := range []string{"txoutbox.relay.batch.size", "txoutbox.relay.batch.duration", "txoutbox.relay.attempts"} {
		require.Contains(t, names, want)
	}
}

func TestTelemetry_MetricsForFailuresAndGauges(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.SQLite)
	st := newStore(t, db, gormstore.Config{})
	fill(t, db, st, "m", 3, 2)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	// Gauges are read from the outbox at collection time.
	pub := newRecordingPublisher()
	pub.fail = func(_ string, ev seqEvent) error {
		if ev.Key == "k01" {
			return errPoison
		}
		return nil
	}
	fwd, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{
		MeterProvider: mp, MaxAttempts: 1, PollInterval: 10 * time.Millisecond,
	}))
	require.NoError(t, err)
	runForwarder(t, fwd)
	ctx := context.Background()
	var rm metricdata.ResourceMetrics
	require.Eventually(t, func() bool {
		rm = metricdata.ResourceMetrics{}
		require.NoError(t, reader.Collect(ctx, &rm))
		return sumOf(rm, "txoutbox.relay.published", "m") == 4 && sumOf(rm, "txoutbox.relay.parked", "m") == 1
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, int64(1), sumOf(rm, "txoutbox.relay.publish_failures", "m"))
	// The gauges are read at collection time; collect again now that the
	// batch that parked the row has committed.
	rm = metricdata.ResourceMetrics{}
	require.NoError(t, reader.Collect(ctx, &rm))
	require.Equal(t, int64(1), gaugeOf(rm, "txoutbox.outbox.failed", "m"), "the parked row")
	require.Equal(t, int64(1), gaugeOf(rm, "txoutbox.outbox.pending", "m"), "the row behind it")
}

func sumOf(rm metricdata.ResourceMetrics, name, topic string) int64 {
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, dp := range s.DataPoints {
					if v, _ := dp.Attributes.Value(attribute.Key("messaging.destination.name")); v.AsString() == topic {
						n += dp.Value
					}
				}
			}
		}
	}
	return n
}

func gaugeOf(rm metricdata.ResourceMetrics, name, topic string) int64 {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if g, ok := m.Data.(metricdata.Gauge[int64]); ok && m.Name == name {
				for _, dp := range g.DataPoints {
					if v, _ := dp.Attributes.Value(attribute.Key("messaging.destination.name")); v.AsString() == topic {
						return dp.Value
					}
				}
			}
		}
	}
	return -1
}

func metricNames(rm metricdata.ResourceMetrics) []string {
	var out []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out = append(out, m.Name)
		}
	}
	return out
}
