package demo

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers"
	"github.com/txoutbox/txoutbox/example_app/internal/app"
	"github.com/txoutbox/txoutbox/example_app/internal/readmodel"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"gorm.io/gorm"
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

func TestProgressString(t *testing.T) {
	t.Parallel()
	p := Progress{Elapsed: 3400 * time.Millisecond, Phase: "commands", Orders: 1000, Placed: 412, Paid: 280, Cancelled: 121,
		Committed: 813, Published: 790, Consumed: 761}
	require.Equal(t, "progress:      3s commands: orders 412/1000 placed, 280 paid, 121 cancelled; events 813 committed, 790 published, 761 consumed", p.String())
}

func TestPrintExplainsLatency(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	Result{Orders: 1, P50: time.Millisecond}.Print(&out)
	lines := strings.Split(out.String(), "\n")
	require.True(t, strings.HasPrefix(lines[2], "latency:     commit to projection p50 1ms"), lines[2])
	require.Equal(t, "             (per event: from its command's commit to its projection, through relay, broker and consumer, queueing included)", lines[3])
}

// startApp runs an app (SQLite, GoChannel) with rec in its AfterCommit
// hooks and returns it, its database and its URL.
func startApp(t *testing.T, rec *Recorder) (*app.App, *gorm.DB, string) {
	t.Helper()
	db := testdb.OpenSQLite(t)
	b, err := brokers.Open(t.Context(), "", brokers.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
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
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	return a, db, "http://" + ln.Addr().String()
}

// The run writes a progress line at every interval, with counts that only
// grow, and none after it returns.
func TestRunProgress(t *testing.T) {
	t.Parallel()
	rec := NewRecorder("demo-progress")
	a, db, base := startApp(t, rec)
	var out bytes.Buffer
	res, err := Run(t.Context(), a, db, base, rec, Config{
		Orders: 60, Concurrency: 2, Timeout: 10 * time.Second, Prefix: "demo-progress",
		Progress: &out, ProgressInterval: 5 * time.Millisecond,
	})
	require.NoError(t, err)
	require.True(t, res.OK(), res.Failures)
	text := out.String()
	time.Sleep(30 * time.Millisecond)
	require.Equal(t, text, out.String(), "no progress line after Run returned")

	line := regexp.MustCompile(`^progress: +(\d+)s (commands|catch-up|checks): orders (\d+)/60 placed, (\d+) paid, (\d+) cancelled; events (\d+) committed, (\d+) published, (\d+) consumed$`)
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	require.NotEmpty(t, lines[0], "at least one progress line")
	prev := make([]int, 8)
	for _, l := range lines {
		m := line.FindStringSubmatch(l)
		require.NotNil(t, m, "%q", l)
		for i, g := range m[1:] {
			if i == 1 {
				continue // the phase
			}
			n, err := strconv.Atoi(g)
			require.NoError(t, err)
			require.GreaterOrEqual(t, n, prev[i], "%q: field %d went down", l, i)
			prev[i] = n
		}
	}
	require.LessOrEqual(t, prev[2], 60)
}

// The checks catch what they are there for: an event applied that was
// never committed, and a committed event that never arrived.
func TestRunDetectsProblems(t *testing.T) {
	t.Parallel()
	const prefix = "demo-test"
	rec := NewRecorder(prefix)
	a, db, base := startApp(t, rec)

	// A row the projection never wrote, and an event nobody projects.
	require.NoError(t, db.Create(&readmodel.ProjectedEvent{MessageUUID: "bogus", OrderID: prefix + "-x", Event: "OrderPaid", Version: 2}).Error)
	rec.events["ghost"] = committed{orderID: prefix + "-0", at: time.Now()}

	res, err := Run(t.Context(), a, db, base, rec, Config{Orders: 12, Concurrency: 4, Timeout: 5 * time.Second, Prefix: prefix})
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
