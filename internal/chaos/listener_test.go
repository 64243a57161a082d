//go:build chaos

package chaos_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

// Shape of TestListenerReconnectsAfterRepeatedDrops.
const (
	dropCount      = 8
	dropMinBackoff = 100 * time.Millisecond
	// dropReconnectBound is how long the listener may take to come back
	// after a drop: many times MinBackoff, far below MaxBackoff.
	dropReconnectBound = 3 * time.Second
)

// TestListenerReconnectsAfterRepeatedDrops kills the forwarder's LISTEN
// connection eight times (pg_terminate_backend, as a PostgreSQL restart,
// a failover or a proxy's idle timeout would), waiting for it to come back
// each time. A dropped listener must come back within a few MinBackoffs
// every time: one that waits longer with every drop in the forwarder's
// life ends up leaving it on polling alone for MaxBackoff (default 5m)
// after each drop. After each reconnection a commit from another pool must
// be relayed by its notification (PollInterval is 1m).
func TestListenerReconnectsAfterRepeatedDrops(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, schema := testdb.OpenPostgres(t)
	const table = "chaos_drop_outbox"
	app := "txoutbox_chaos_drop_" + randomHex(4)
	dbL := openPostgres(t, withAppName(t, testdb.SchemaURL(t, schema), app))
	storeL, err := gormstore.New(dbL, gormstore.Config{Table: table})
	require.NoError(t, err)
	require.NoError(t, storeL.Migrate(ctx))
	storeW, err := gormstore.New(db, gormstore.Config{Table: table})
	require.NoError(t, err)
	trW, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: storeW})
	require.NoError(t, err)

	pub := newMemPublisher(0)
	log, _ := newRecordingLogger()
	fw, err := outbox.NewForwarder(storeL, pub, outbox.ForwarderConfig{
		PollInterval: time.Minute,
		MinBackoff:   dropMinBackoff,
		MaxBackoff:   time.Minute,
		Logger:       log,
	})
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(ctx)
	var done sync.WaitGroup
	done.Go(func() {
		if err := fw.Run(runCtx); err != nil {
			t.Errorf("forwarder Run: %v", err)
		}
	})
	t.Cleanup(func() { stop(); done.Wait() })

	listenerPID := func() int64 {
		var pid int64
		require.NoError(t, db.Raw(`SELECT coalesce(max(pid), 0) FROM pg_stat_activity
WHERE application_name = ? AND query LIKE 'LISTEN %' AND state = 'idle'`, app).Scan(&pid).Error)
		return pid
	}
	waitListener := func(old int64, within time.Duration, what string) int64 {
		t.Helper()
		var pid int64
		eventually(t, within, 10*time.Millisecond, func() (bool, string) {
			pid = listenerPID()
			return pid != 0 && pid != old, fmt.Sprintf("LISTEN connection pid %d, dropped one %d", pid, old)
		}, what)
		return pid
	}
	relayed := func(id string) {
		t.Helper()
		require.NoError(t, trW.Run(ctx, "Drop", func(ctx context.Context) error {
			return outbox.Emit(ctx, placed{ID: id, Key: "drop"})
		}))
		eventually(t, dropReconnectBound, 5*time.Millisecond, func() (bool, string) {
			return pub.has(id), "not published"
		}, "event "+id+" not relayed by notification (PollInterval is 1m)")
	}

	pid := waitListener(0, 10*time.Second, "the forwarder never listened")
	relayed("before")
	for i := 1; i <= dropCount; i++ {
		var ok bool
		require.NoError(t, db.Raw(`SELECT pg_terminate_backend(?)`, pid).Scan(&ok).Error)
		require.True(t, ok, "pg_terminate_backend(%d)", pid)
		dropped := time.Now()
		pid = waitListener(pid, dropReconnectBound,
			fmt.Sprintf("after drop %d of %d the LISTEN connection did not come back (MinBackoff %v)", i, dropCount, dropMinBackoff))
		t.Logf("drop %d: listening again after %v", i, time.Since(dropped).Round(time.Millisecond))
		relayed(fmt.Sprintf("after-drop-%d", i))
	}
}
