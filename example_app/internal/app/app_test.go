package app_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers"
	"github.com/txoutbox/txoutbox/example_app/internal/app"
	"github.com/txoutbox/txoutbox/example_app/internal/orders"
	"github.com/txoutbox/txoutbox/example_app/internal/readmodel"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"gorm.io/gorm"
)

func TestValidTopic(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"orders", "orders-demo-1a2b", "Orders_v2"} {
		require.NoError(t, app.ValidTopic(ok), ok)
	}
	for _, bad := range []string{"", "orders.v1", "a b", "a/b", "ü", string(make([]byte, 101))} {
		require.Error(t, app.ValidTopic(bad), bad)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	_, err := app.New(t.Context(), app.Config{})
	require.Error(t, err)
	b, err := brokers.Open(t.Context(), "", brokers.Options{})
	require.NoError(t, err)
	defer b.Close()
	_, err = app.New(t.Context(), app.Config{DB: testdb.OpenSQLite(t), Broker: b, Topic: "a.b"})
	require.ErrorContains(t, err, "only letters")
}

// Commands dispatched on the bus (no HTTP) reach the read model; events
// committed while the app is stopped wait in the outbox and are relayed
// when it starts again.
func TestBusToReadModelAcrossRestarts(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := t.Context()
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		var hooked atomic.Int64
		newApp := func() *app.App {
			b, err := brokers.Open(ctx, "", brokers.Options{})
			require.NoError(t, err)
			t.Cleanup(func() { _ = b.Close() })
			a, err := app.New(ctx, app.Config{DB: db, Broker: b, Logger: log, AfterCommit: []func(middleware.AfterCommitParams){
				func(p middleware.AfterCommitParams) { hooked.Add(int64(len(p.Records))) },
			}})
			require.NoError(t, err)
			return a
		}
		start := func(a *app.App) (stop func()) {
			runCtx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.Run(runCtx, nil) }()
			return func() { cancel(); require.NoError(t, <-done) }
		}
		waitFor := func(status orders.Status) {
			t.Helper()
			require.Eventually(t, func() bool {
				v, err := readmodel.Get(ctx, db, "o-1")
				return err == nil && v.Status == status
			}, 10*time.Second, 5*time.Millisecond)
		}

		a := newApp()
		require.NoError(t, a.Bus.Dispatch(ctx, orders.PlaceOrder{OrderID: "o-1", Customer: "ada", AmountCents: 7}))
		st, err := a.Store.Stats(ctx)
		require.NoError(t, err)
		require.EqualValues(t, 1, st.Pending, "committed before the app runs: waits in the outbox")
		stop := start(a)
		waitFor(orders.StatusPlaced)
		stop()

		require.NoError(t, a.Bus.Dispatch(ctx, orders.PayOrder{OrderID: "o-1"}))
		require.ErrorIs(t, a.Bus.Dispatch(ctx, orders.CancelOrder{OrderID: "o-1"}), orders.ErrPaid)
		v, err := readmodel.Get(ctx, db, "o-1")
		require.NoError(t, err)
		require.Equal(t, orders.StatusPlaced, v.Status, "nothing relays while the app is stopped")

		b := newApp() // a restart: a new process on the same database
		stop = start(b)
		waitFor(orders.StatusPaid)
		stop()
		require.EqualValues(t, 2, hooked.Load())
		require.EqualValues(t, 1, b.Published(app.DefaultTopic))
		require.Equal(t, readmodel.Stats{Applied: 1}, b.Projector.Stats())
		require.EqualValues(t, 1, b.Consumer.Stats().Processed)
		require.EqualValues(t, 2, testdb.Count(t, db, "projected_events", ""))
	})
}

// A service asked to stop while it is still starting stops at once, and
// says so.
func TestRunStopsWhileStarting(t *testing.T) {
	t.Parallel()
	b, err := brokers.Open(t.Context(), "", brokers.Options{})
	require.NoError(t, err)
	defer b.Close()
	var logs bytes.Buffer // slog's handler serialises writes; read after Run returned
	a, err := app.New(t.Context(), app.Config{DB: testdb.OpenSQLite(t), Broker: b, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	require.NoError(t, a.Run(ctx, nil))
	require.Less(t, time.Since(start), app.ShutdownTimeout/2, "stopping a starting service must not wait out the shutdown timeout")
	require.Contains(t, logs.String(), "shutting down")
}
