package outbox

import (
	"context"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// instrumentationName names the tracer and meter of this package.
const instrumentationName = "github.com/txoutbox/txoutbox/outbox"

// traceContext returns the trace context and baggage of ctx as the global
// propagator writes them, or nil when it writes nothing (no propagator set,
// or no span and no baggage in ctx).
func traceContext(ctx context.Context) map[string]string {
	p := otel.GetTextMapPropagator()
	if len(p.Fields()) == 0 {
		return nil // no propagator set: nothing to store, nothing to allocate
	}
	c := propagation.MapCarrier{}
	p.Inject(ctx, c)
	if len(c) == 0 {
		return nil
	}
	return c
}

// telemetry is a forwarder's OpenTelemetry instruments. With no provider
// configured (the OpenTelemetry globals' default) every call is a no-op.
type telemetry struct {
	tracer     trace.Tracer
	propagator propagation.TextMapPropagator
	meter      metric.Meter

	published     metric.Int64Counter
	failures      metric.Int64Counter
	parked        metric.Int64Counter
	attempts      metric.Int64Histogram
	batchSize     metric.Int64Histogram
	batchDuration metric.Float64Histogram
	pending       metric.Int64ObservableGauge
	failed        metric.Int64ObservableGauge
	oldestAge     metric.Float64ObservableGauge

	// topics are the topics seen so far: the gauges report 0 for those
	// with nothing waiting, rather than dropping their series.
	topicsMu sync.Mutex
	topics   map[string]bool
}

func newTelemetry(cfg ForwarderConfig) (*telemetry, error) {
	t := &telemetry{
		topics:     map[string]bool{},
		tracer:     cfg.TracerProvider.Tracer(instrumentationName),
		propagator: cfg.Propagator,
		meter:      cfg.MeterProvider.Meter(instrumentationName),
	}
	var err error
	m := t.meter
	if t.published, err = m.Int64Counter("txoutbox.relay.published", metric.WithUnit("{message}"),
		metric.WithDescription("Messages published and marked delivered.")); err != nil {
		return nil, err
	}
	if t.failures, err = m.Int64Counter("txoutbox.relay.publish_failures", metric.WithUnit("{message}"),
		metric.WithDescription("Failed publish attempts charged to a row.")); err != nil {
		return nil, err
	}
	if t.parked, err = m.Int64Counter("txoutbox.relay.parked", metric.WithUnit("{message}"),
		metric.WithDescription("Rows parked as failed.")); err != nil {
		return nil, err
	}
	if t.attempts, err = m.Int64Histogram("txoutbox.relay.attempts", metric.WithUnit("{attempt}"),
		metric.WithDescription("Publish attempts a message needed, recorded when it is delivered or parked."),
		metric.WithExplicitBucketBoundaries(1, 2, 3, 5, 10, 20)); err != nil {
		return nil, err
	}
	if t.batchSize, err = m.Int64Histogram("txoutbox.relay.batch.size", metric.WithUnit("{message}"),
		metric.WithDescription("Rows claimed per batch."),
		metric.WithExplicitBucketBoundaries(1, 10, 50, 100, 250, 500, 1000, 5000)); err != nil {
		return nil, err
	}
	if t.batchDuration, err = m.Float64Histogram("txoutbox.relay.batch.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from claim to finish of a batch."),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)); err != nil {
		return nil, err
	}
	if t.pending, err = m.Int64ObservableGauge("txoutbox.outbox.pending", metric.WithUnit("{message}"),
		metric.WithDescription("Rows waiting to be relayed (not parked).")); err != nil {
		return nil, err
	}
	if t.failed, err = m.Int64ObservableGauge("txoutbox.outbox.failed", metric.WithUnit("{message}"),
		metric.WithDescription("Parked rows.")); err != nil {
		return nil, err
	}
	if t.oldestAge, err = m.Float64ObservableGauge("txoutbox.outbox.oldest_pending_age", metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest pending row.")); err != nil {
		return nil, err
	}
	return t, nil
}

// observeStats registers the outbox gauges, read with stats at each
// collection, until the returned function is called.
func (t *telemetry) observeStats(stats func(context.Context) (Stats, error)) (func(), error) {
	reg, err := t.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		st, err := stats(ctx)
		if err != nil {
			return err
		}
		t.topicsMu.Lock()
		defer t.topicsMu.Unlock()
		for topic := range st.Topics {
			t.topics[topic] = true
		}
		for topic := range t.topics {
			ts := st.Topics[topic]
			attrs := metric.WithAttributes(attribute.String("messaging.destination.name", topic))
			o.ObserveInt64(t.pending, ts.Pending, attrs)
			o.ObserveInt64(t.failed, ts.Failed, attrs)
			o.ObserveFloat64(t.oldestAge, ts.OldestPendingAge.Seconds(), attrs)
		}
		return nil
	}, t.pending, t.failed, t.oldestAge)
	if err != nil {
		return nil, err
	}
	return func() { _ = reg.Unregister() }, nil
}

// startPublish starts a producer span for each message that carries a trace
// context (stored at Emit time), as a child of the command's span, and
// writes the span's context into the message metadata so consumers continue
// the same trace. It returns a function that ends the spans.
func (t *telemetry) startPublish(topic string, msgs []*message.Message) func(err error) {
	var spans []trace.Span
	fields := t.propagator.Fields()
	for _, m := range msgs {
		if !hasAny(m.Metadata, fields) {
			continue
		}
		ctx := t.propagator.Extract(context.Background(), propagation.MapCarrier(m.Metadata))
		ctx, span := t.tracer.Start(ctx, "publish "+topic,
			trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(
				attribute.String("messaging.system", "txoutbox"),
				attribute.String("messaging.operation.type", "send"),
				attribute.String("messaging.destination.name", topic),
				attribute.String("messaging.message.id", m.UUID),
			))
		t.propagator.Inject(ctx, propagation.MapCarrier(m.Metadata))
		spans = append(spans, span)
	}
	return func(err error) {
		for _, s := range spans {
			if err != nil {
				s.RecordError(err)
				s.SetStatus(codes.Error, "publish failed")
			}
			s.End()
		}
	}
}

func hasAny(md message.Metadata, keys []string) bool {
	for _, k := range keys {
		if _, ok := md[k]; ok {
			return true
		}
	}
	return false
}

// recordBatch records the metrics of one finished batch.
func (t *telemetry) recordBatch(ctx context.Context, info BatchInfo, rows []Row, delivered []int64, failures []Failure) {
	t.batchSize.Record(ctx, int64(info.Claimed))
	t.batchDuration.Record(ctx, info.Duration.Seconds())
	if len(delivered) == 0 && len(failures) == 0 {
		return
	}
	byID := make(map[int64]*Row, len(rows))
	for i := range rows {
		byID[rows[i].ID] = &rows[i]
	}
	type counts struct{ published, failed, parked int64 }
	perTopic := map[string]*counts{}
	get := func(topic string) *counts {
		c := perTopic[topic]
		if c == nil {
			c = &counts{}
			perTopic[topic] = c
		}
		return c
	}
	for _, id := range delivered {
		if r := byID[id]; r != nil {
			get(r.Topic).published++
			t.attempts.Record(ctx, int64(r.Attempts+1))
		}
	}
	for _, f := range failures {
		r := byID[f.ID]
		if r == nil {
			continue
		}
		c := get(r.Topic)
		if f.Park {
			c.parked++
			t.attempts.Record(ctx, int64(r.Attempts+1))
		}
		c.failed++
	}
	t.topicsMu.Lock()
	for topic := range perTopic {
		t.topics[topic] = true
	}
	t.topicsMu.Unlock()
	for topic, c := range perTopic {
		attrs := metric.WithAttributes(attribute.String("messaging.destination.name", topic))
		if c.published > 0 {
			t.published.Add(ctx, c.published, attrs)
		}
		if c.failed > 0 {
			t.failures.Add(ctx, c.failed, attrs)
		}
		if c.parked > 0 {
			t.parked.Add(ctx, c.parked, attrs)
		}
	}
}
