package walrelay_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"github.com/txoutbox/txoutbox/walrelay"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A slot that no relay reads keeps the WAL written since: Stats reports
// it, and past WarnRetainedBytes flags it and warns, once within the
// warning interval. A relay that reads the slot confirms it again.
func TestStatsReportsRetainedWALAndWarns(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	var logs syncBuffer
	warnCfg := cfg
	warnCfg.WarnRetainedBytes = 64 << 10
	warnCfg.Forwarder.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	s := newSink(t)
	r, err := walrelay.NewRelay(testdb.URL(), s.pub, warnCfg)
	require.NoError(t, err)
	ctx := context.Background()

	before, err := r.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, cfg.Slot, before.Slot)
	require.False(t, before.Active)
	require.Contains(t, []string{"reserved", "extended"}, before.WALStatus)

	// About 1 MB of events while no relay runs.
	big := make([]byte, 10<<10)
	for range 100 {
		_, err := conn.Exec(ctx, "SELECT pg_logical_emit_message(true, $1, $2::bytea)", cfg.Prefix+"-other", big)
		require.NoError(t, err)
	}
	st, err := r.Stats(ctx)
	require.NoError(t, err)
	require.Greater(t, st.RetainedBytes, int64(900_000), "retained WAL")
	require.Greater(t, st.LagBytes, int64(900_000), "lag")
	require.GreaterOrEqual(t, st.RetainedBytes, st.LagBytes)
	require.True(t, st.OverThreshold)
	var keep string
	require.NoError(t, conn.QueryRow(ctx, "SHOW max_slot_wal_keep_size").Scan(&keep))
	if keep == "-1" {
		require.EqualValues(t, -1, st.SafeWALBytes, "no max_slot_wal_keep_size")
	}
	require.Equal(t, 1, strings.Count(logs.String(), "the replication slot retains much WAL"), logs.String())
	_, err = r.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, strings.Count(logs.String(), "the replication slot retains much WAL"), "warned again within 5 minutes")

	// Under the default threshold of 1 GiB it is not flagged.
	quiet, err := walrelay.NewRelay(testdb.URL(), s.pub, cfg)
	require.NoError(t, err)
	st, err = quiet.Stats(ctx)
	require.NoError(t, err)
	require.False(t, st.OverThreshold)

	// A relay that reads the slot confirms the WAL (the messages have
	// another prefix: nothing to publish).
	start(t, s.pub, cfg)
	require.Eventually(t, func() bool {
		st, err := quiet.Stats(ctx)
		require.NoError(t, err)
		return st.Active && st.LagBytes < 64<<10
	}, 15*time.Second, 50*time.Millisecond)
}

// A running relay exports its slot's lag and retained WAL as gauges on
// the Forwarder's meter provider.
func TestSlotGauges(t *testing.T) {
	conn := connect(t)
	cfg := setup(t, conn)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	cfg.Forwarder.MeterProvider = mp
	s := newSink(t)
	start(t, s.pub, cfg)
	emit(t, conn, cfg.Prefix, record("ev-0", "k"))
	s.waitFor(t, 1, 20*time.Second)

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			g, ok := m.Data.(metricdata.Gauge[int64])
			if !ok {
				continue
			}
			for _, dp := range g.DataPoints {
				if v, ok := dp.Attributes.Value("txoutbox.slot"); ok && v.AsString() == cfg.Slot {
					got[m.Name] = dp.Value
				}
			}
		}
	}
	for _, name := range []string{"txoutbox.walrelay.slot.lag", "txoutbox.walrelay.slot.retained_wal", "txoutbox.walrelay.held", "txoutbox.walrelay.diverted_keys"} {
		require.Contains(t, got, name)
	}
	require.Positive(t, got["txoutbox.walrelay.slot.retained_wal"])
	require.Zero(t, got["txoutbox.walrelay.held"])
}

func TestConfigValidateWarnRetainedBytes(t *testing.T) {
	err := walrelay.Config{WarnRetainedBytes: -1}.Validate()
	require.ErrorIs(t, err, outbox.ErrInvalidConfig)
	require.ErrorContains(t, err, "WarnRetainedBytes is negative")
}
