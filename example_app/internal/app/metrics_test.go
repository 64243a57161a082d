package app_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/example_app/internal/app"
	"github.com/txoutbox/txoutbox/example_app/internal/orders"
	"github.com/txoutbox/txoutbox/example_app/internal/readmodel"
	"github.com/txoutbox/txoutbox/internal/testdb"
)

// GET /metrics serves the relay and consumer metrics in the Prometheus
// text format.
func TestMetricsEndpoint(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := testdb.Open(t, testdb.SQLite)
	a := runApp(t, db, app.Config{})

	require.NoError(t, a.Bus.Dispatch(ctx, orders.PlaceOrder{OrderID: "o-1", Customer: "ada", AmountCents: 7}))
	require.Eventually(t, func() bool {
		_, err := readmodel.Get(ctx, db, "o-1")
		return err == nil
	}, 10*time.Second, 5*time.Millisecond)

	var body string
	require.Eventually(t, func() bool {
		rec := httptest.NewRecorder()
		a.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		body = rec.Body.String()
		// The outbox gauges read the table at each scrape: wait for all.
		return rec.Code == http.StatusOK && strings.Contains(body, `txoutbox_relay_published_total{`) &&
			strings.Contains(body, `txoutbox_inbox_processed_total{`) && strings.Contains(body, "txoutbox_outbox_pending")
	}, 10*time.Second, 10*time.Millisecond)
	// The consumer's series.
	require.Contains(t, body, `txoutbox_consumer="orders.read_model"`)
	require.Contains(t, body, "txoutbox_inbox_lag_seconds_bucket")
	require.Contains(t, body, "txoutbox_inbox_in_flight")
	require.Contains(t, body, "txoutbox_inbox_batch_size_bucket")
	require.Contains(t, body, `messaging_destination_name="orders"`)
	require.Contains(t, body, "txoutbox_outbox_pending")
	require.Contains(t, body, "txoutbox_relay_batch_duration_seconds_bucket")
	// The Go runtime's and the process's.
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "go_gc_duration_seconds",
		"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} {
		require.Regexp(t, `(?m)^`+name+`(\{.*\})? [0-9.e+-]+$`, body, name)
	}
}
