package inbox

import (
	"context"
	"sync"
	"time"

	"github.com/txoutbox/txoutbox/outbox"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// instrumentationName names the meter of this package.
const instrumentationName = "github.com/txoutbox/txoutbox/handlers/inbox"

// consumerTelemetry is a consumer's OpenTelemetry instruments. With no
// provider configured (the OpenTelemetry globals' default) every call is a
// no-op.
type consumerTelemetry struct {
	meter    metric.Meter
	consumer attribute.KeyValue

	processedC, duplicates, failures, parked, held, skipped metric.Int64Counter
	lag                                                     metric.Float64Histogram
	batchSize                                               metric.Int64Histogram
	inFlight                                                metric.Int64ObservableGauge

	attrs sync.Map // topic → metric.MeasurementOption
}

func newConsumerTelemetry(mp metric.MeterProvider, consumer string) (*consumerTelemetry, error) {
	t := &consumerTelemetry{meter: mp.Meter(instrumentationName), consumer: attribute.String("txoutbox.consumer", consumer)}
	m := t.meter
	counters := []struct {
		c    *metric.Int64Counter
		name string
		desc string
	}{
		{&t.processedC, "txoutbox.inbox.processed", "Messages whose handler committed."},
		{&t.duplicates, "txoutbox.inbox.duplicates", "Messages acked without running the handler: the inbox had them."},
		{&t.failures, "txoutbox.inbox.failures", "Failed handler attempts."},
		{&t.parked, "txoutbox.inbox.parked", "Messages recorded as failed in the failed table."},
		{&t.held, "txoutbox.inbox.held", "Messages recorded as held behind a failed message of their key."},
		{&t.skipped, "txoutbox.inbox.skipped", "Messages with an unknown event acked under UnknownSkip."},
	}
	var err error
	for _, c := range counters {
		if *c.c, err = m.Int64Counter(c.name, metric.WithUnit("{message}"), metric.WithDescription(c.desc)); err != nil {
			return nil, err
		}
	}
	if t.lag, err = m.Float64Histogram("txoutbox.inbox.lag", metric.WithUnit("s"),
		metric.WithDescription("Time from the event's emit (metadata created_at) to the commit of its processing."),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)); err != nil {
		return nil, err
	}
	if t.batchSize, err = m.Int64Histogram("txoutbox.inbox.batch.size", metric.WithUnit("{message}"),
		metric.WithDescription("Messages per committed consumer transaction."),
		metric.WithExplicitBucketBoundaries(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)); err != nil {
		return nil, err
	}
	if t.inFlight, err = m.Int64ObservableGauge("txoutbox.inbox.in_flight", metric.WithUnit("{message}"),
		metric.WithDescription("Messages received and not acked yet.")); err != nil {
		return nil, err
	}
	return t, nil
}

// observe reports c's in-flight gauge at each collection.
func (t *consumerTelemetry) observe(c *Consumer) error {
	opt := metric.WithAttributes(t.consumer)
	_, err := t.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(t.inFlight, c.inFlight.Load(), opt)
		return nil
	}, t.inFlight)
	return err
}

// attrsFor returns the attributes of a topic's series.
func (t *consumerTelemetry) attrsFor(topic string) metric.MeasurementOption {
	if v, ok := t.attrs.Load(topic); ok {
		return v.(metric.MeasurementOption)
	}
	v, _ := t.attrs.LoadOrStore(topic, metric.WithAttributeSet(attribute.NewSet(t.consumer, attribute.String("messaging.destination.name", topic))))
	return v.(metric.MeasurementOption)
}

func (t *consumerTelemetry) count(ctx context.Context, c metric.Int64Counter, topic string) {
	c.Add(ctx, 1, t.attrsFor(topic))
}

func (t *consumerTelemetry) batch(ctx context.Context, n int) {
	t.batchSize.Record(ctx, int64(n), metric.WithAttributes(t.consumer))
}

// processed counts a processed item and records its lag.
func (t *consumerTelemetry) processed(ctx context.Context, it *item) {
	opt := t.attrsFor(it.topic)
	t.processedC.Add(ctx, 1, opt)
	if created, err := time.Parse(time.RFC3339Nano, it.msg.Metadata.Get(outbox.MetadataCreatedAt)); err == nil {
		t.lag.Record(ctx, time.Since(created).Seconds(), opt)
	}
}
