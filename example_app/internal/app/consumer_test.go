package app_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers"
	"github.com/txoutbox/txoutbox/example_app/internal/app"
	"github.com/txoutbox/txoutbox/example_app/internal/httpapi"
	"github.com/txoutbox/txoutbox/example_app/internal/orders"
	"github.com/txoutbox/txoutbox/example_app/internal/readmodel"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// runApp runs the app on db until the test ends, with an in-process
// GoChannel broker unless cfg has a broker; cfg gives the rest of the
// config. It returns once the consumer has subscribed.
func runApp(t *testing.T, db *gorm.DB, cfg app.Config) *app.App {
	t.Helper()
	if cfg.Broker == nil {
		b, err := brokers.Open(t.Context(), "", brokers.Options{})
		require.NoError(t, err)
		t.Cleanup(func() { _ = b.Close() })
		cfg.Broker = b
	}
	cfg.DB = db
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	a, err := app.New(t.Context(), cfg)
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx, nil) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	<-a.Consumer.Running()
	return a
}

// A message the consumer cannot handle (an event it does not know, one
// without a name) is parked in the inbox's failed table; later orders
// still reach the read model, and /healthz counts the parked messages.
func TestPoisonMessagesDoNotStopTheReadModel(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := testdb.Open(t, testdb.Postgres)
	b, err := brokers.Open(ctx, "", brokers.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	a := runApp(t, db, app.Config{Broker: b})

	unknown := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
	unknown.Metadata.Set(outbox.MetadataName, "OrderShipped")
	unknown.Metadata.Set(outbox.MetadataPartitionKey, "o-x")
	noName := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
	require.NoError(t, b.Publisher.Publish(a.Topic(), unknown, noName))

	require.NoError(t, a.Bus.Dispatch(ctx, orders.PlaceOrder{OrderID: "o-1", Customer: "ada", AmountCents: 7}))
	require.Eventually(t, func() bool {
		_, err := readmodel.Get(ctx, db, "o-1")
		return err == nil
	}, 10*time.Second, 5*time.Millisecond, "a later order is projected")

	var health httpapi.HealthResponse
	require.Eventually(t, func() bool {
		rec := httptest.NewRecorder()
		a.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &health))
		return health.ConsumerFailed == 2
	}, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, "ok", health.Status)
	require.Equal(t, "ok", health.Consumer)

	rows, err := a.Inbox.ListFailed(ctx, readmodel.Consumer, 0, 10)
	require.NoError(t, err)
	require.Len(t, rows, 2)
	for _, r := range rows {
		require.Equal(t, inbox.StatusFailed, r.Status)
		require.Contains(t, r.Error, "unknown event")
		require.Equal(t, 1, r.Attempts, "an unknown event is parked at once")
	}
}

// A consumer that makes no progress while messages wait (here: the read
// model's table is locked) makes /healthz report it, until it goes on.
func TestHealthReportsStalledConsumer(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := testdb.Open(t, testdb.Postgres)
	a := runApp(t, db, app.Config{Consumer: inbox.ConsumerConfig{StallAfter: 200 * time.Millisecond}})

	health := func() httpapi.HealthResponse {
		rec := httptest.NewRecorder()
		a.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		var h httpapi.HealthResponse
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &h))
		return h
	}
	lock := db.Begin()
	require.NoError(t, lock.Exec("LOCK TABLE order_views IN ACCESS EXCLUSIVE MODE").Error)
	require.NoError(t, a.Bus.Dispatch(ctx, orders.PlaceOrder{OrderID: "o-1", Customer: "ada", AmountCents: 7}))
	require.Eventually(t, func() bool { return health().Status == "degraded" }, 10*time.Second, 10*time.Millisecond)
	h := health()
	require.Contains(t, h.Consumer, "stalled: ")
	require.Contains(t, h.Consumer, "1 messages waiting")
	require.Equal(t, "ok", h.Broker)

	require.NoError(t, lock.Rollback().Error)
	require.Eventually(t, func() bool { return health().Status == "ok" }, 10*time.Second, 10*time.Millisecond)
	_, err := readmodel.Get(ctx, db, "o-1")
	require.NoError(t, err)
}
