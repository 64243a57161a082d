package app

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// newMetrics returns a meter provider whose metrics are served in the
// Prometheus text format by the returned handler (GET /metrics).
//
// The app uses the Prometheus exporter rather than OTLP because it works
// with nothing else running: `curl localhost:8080/metrics` shows the relay
// at once, and any Prometheus (or an OpenTelemetry Collector's prometheus
// receiver) can scrape it. An OTLP exporter needs a collector to send to.
//
// Next to the relay's and the consumer's metrics it serves the Go runtime's
// (go_goroutines, go_memstats_*, go_gc_duration_seconds, ...) and the
// process's (process_cpu_seconds_total, process_resident_memory_bytes,
// process_open_fds, ...), from the Prometheus client's collectors.
func newMetrics() (*sdkmetric.MeterProvider, http.Handler, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	return mp, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
}
