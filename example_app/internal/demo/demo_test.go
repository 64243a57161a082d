package demo

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers"
	"github.com/txoutbox/txoutbox/example_app/internal/app"
	"github.com/txoutbox/txoutbox/example_app/internal/readmodel"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
)

func TestPercentile(t *testing.T) {
	t.Parallel()
	require.Zero(t, percentile(nil, 50))
	ds := make([]time.Duration, 100)
	for i := range ds {
		ds[i] = time.Duration(100-i) * time.Millisecond
	}
	require.Equal(t, 50*time.Millisecond, percentile(ds, 50))
	require.Equal(t, 99*time.Millisecond, percentile(ds, 99))
	require.Equal(t, 100*time.Millisecond, percentile(ds, 100))
	require.Equal(t, 7*time.Millisecond, percentile([]time.Duration{7 * time.Millisecond}, 99))
}

// The checks catch what they are there for: an event applied that was
// never committed, and a committed event that never arrived.
func TestRunDetectsProblems(t *testing.T) {
	t.Parallel()
	db := testdb.OpenSQLite(t)
	b, err := brokers.Open(t.Context(), "", brokers.Options{})
	require.NoError(t, err)
	defer b.Close()
	const prefix = "demo-test"
	rec := NewRecorder(prefix)
	a, err := app.New(t.Context(), app.Config{
		DB: db, Broker: b, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		AfterCommit: []func(middleware.AfterCommitParams){rec.AfterCommit},
	})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, ln) }()
	defer func() { cancel(); require.NoError(t, <-done) }()

	// A row the projection never wrote, and an event nobody projects.
	require.NoError(t, db.Create(&readmodel.ProjectedEvent{MessageUUID: "bogus", OrderID: prefix + "-x", Event: "OrderPaid", Version: 2}).Error)
	rec.events["ghost"] = committed{orderID: prefix + "-0", at: time.Now()}

	res, err := Run(t.Context(), a, db, "http://"+ln.Addr().String(), rec, Config{Orders: 12, Concurrency: 4, Timeout: 5 * time.Second, Prefix: prefix})
	require.NoError(t, err)
	require.False(t, res.OK())
	var out bytes.Buffer
	res.Print(&out)
	require.Contains(t, out.String(), "result:      FAILED")
	require.Contains(t, out.String(), "event bogus (OrderPaid of order demo-test-x) was projected but never committed")
	require.Contains(t, out.String(), "event ghost of order demo-test-0 was committed but never projected")
	require.Contains(t, out.String(), "event ghost of order demo-test-0 is not in the inbox")
	require.Contains(t, out.String(), "order demo-test-0: 3 events committed, 2 projected, want 2")
	require.EqualValues(t, 0, res.Unexpected)
	require.Equal(t, 25, res.Committed, "24 real events and the ghost")
}
