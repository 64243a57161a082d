package app_test

import (
	"cmp"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers"
	"github.com/txoutbox/txoutbox/example_app/internal/app"
	"github.com/txoutbox/txoutbox/example_app/internal/orders"
	"github.com/txoutbox/txoutbox/example_app/internal/readmodel"
	"github.com/txoutbox/txoutbox/internal/lateproxy"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
)

// TestStartsWithoutBroker starts the service while its RabbitMQ does not
// answer yet: it starts, takes orders over HTTP (their events wait in the
// outbox), and /healthz says the broker is down. When RabbitMQ appears the
// forwarder and the consumer connect by themselves and the read model
// catches up.
func TestStartsWithoutBroker(t *testing.T) {
	t.Parallel()
	realURL := cmp.Or(os.Getenv("TEST_AMQP_URL"), "amqp://guest:guest@127.0.0.1:5672/")
	cfg, err := brokers.ParseURL(realURL)
	require.NoError(t, err)
	proxy := lateproxy.New(t, cfg.Addrs[0])

	db, _ := testdb.OpenPostgres(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := brokers.Open(t.Context(), proxy.URL(realURL), brokers.Options{
		ConsumerGroup: "test", ConnectTimeout: time.Second, MinReconnect: 100 * time.Millisecond, MaxReconnect: 500 * time.Millisecond, Logger: log,
	})
	require.NoError(t, err, "Open must not fail for an unreachable broker")
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	topic := "orders_outage_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	// The forwarder retries within 100 ms..1 s, so that the test does not
	// wait out the default backoff once the broker is back.
	a, err := app.New(t.Context(), app.Config{DB: db, Broker: b, Topic: topic, Logger: log,
		Forwarder: outbox.ForwarderConfig{MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	base := "http://" + ln.Addr().String()

	health := func() map[string]any {
		resp, err := http.Get(base + "/healthz")
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var body map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		return body
	}
	for _, id := range []string{"o-1", "o-2", "o-3"} {
		resp, err := http.Post(base+"/orders", "application/json",
			strings.NewReader(`{"id":"`+id+`","customer":"ada","amount_cents":100}`))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusCreated, resp.StatusCode, "orders are taken while the broker is down")
	}
	h := health()
	require.Equal(t, "degraded", h["status"])
	require.Contains(t, h["broker"], "down: ")
	require.EqualValues(t, 3, h["outbox_pending"])

	proxy.Start(t)
	t.Cleanup(func() { _ = b.DeleteTopic(context.Background(), topic) })
	require.Eventually(t, func() bool {
		for _, id := range []string{"o-1", "o-2", "o-3"} {
			v, err := readmodel.Get(t.Context(), db, id)
			if err != nil || v.Status != orders.StatusPlaced {
				return false
			}
		}
		return true
	}, 30*time.Second, 20*time.Millisecond, "the read model catches up once the broker answers")
	h = health()
	require.Equal(t, "ok", h["status"])
	require.Equal(t, "ok", h["broker"])
	require.EqualValues(t, 0, h["outbox_pending"])
}
