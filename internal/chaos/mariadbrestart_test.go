//go:build chaos

package chaos_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

// Shape of TestMariaDBRestart: that of TestPostgresRestart, with half the
// backlog and producers that pause 10 ms between commands instead of 2: a
// claim on MariaDB takes well over 100 ms at a backlog of 20,000 rows
// (about 10 ms on PostgreSQL), so the full shape would take minutes to
// drain.
const (
	mariadbBacklog       = 10000
	mariadbProducerPause = 10 * time.Millisecond
	// pollTable is the outbox table of the poll-only forwarder.
	pollTable = "chaos_poll_outbox"
)

// TestMariaDBRestart restarts MariaDB (restartMariaDB) while a forwarder drains a backlog
// and producers commit through the middleware, retrying commands that
// fail, as TestPostgresRestart does. Without restarting anything,
// the forwarder must go on: every committed event (orders table =
// committed commands) is published, no event of an uncommitted command is,
// per key the first deliveries follow the commit order, and the outbox
// ends empty. The restart drops every session, and with them the user
// locks of the claims in flight, so their rows are claimed again. MySQL
// has no LISTEN: a second forwarder that nothing wakes (writes from another
// pool) must still find a commit made after the restart by polling, within
// its poll interval and backoff.
func TestMariaDBRestart(t *testing.T) {
	serverDSN := mariadbDSN(t)
	require.True(t, mariadbUp(serverDSN), "MariaDB is not answering at %s (start it with %s start)", testdb.MySQLURL(), mariadbInit)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	db, name := testdb.OpenMySQL(t)
	// Cleanups run last-in first-out: MariaDB is up again before the
	// database is dropped.
	t.Cleanup(func() { ensureMariaDB(t, serverDSN) })
	require.NoError(t, gormstore.Migrate(ctx, db))
	require.NoError(t, db.Exec(`CREATE TABLE orders (id VARCHAR(64) PRIMARY KEY)`).Error)
	store, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)

	// The main forwarder, woken in process by the middleware. Its publisher
	// takes 20 ms per call, so the backlog drains in a while and the
	// restart hits it in the middle.
	pub := newMemPublisher(20 * time.Millisecond)
	log, _ := newRecordingLogger()
	fw, err := outbox.NewForwarder(store, pub, outbox.ForwarderConfig{
		BatchSize:    100,
		PollInterval: time.Second,
		MinBackoff:   100 * time.Millisecond,
		MaxBackoff:   time.Second,
		Logger:       log,
	})
	require.NoError(t, err)
	tr, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: store, Wake: fw})
	require.NoError(t, err)
	b := bus.New(tr.Middleware())
	registerPlaceOrder(t, b, insertOrderMySQL)

	// The backlog: orders b-0 ... b-9999 with their events on 50 keys.
	commitBacklog(ctx, t, tr, mariadbBacklog, 1000, restartKeys)

	// The poll-only forwarder, on a table of its own in the same database,
	// with pools of its own for it and for its writer.
	dbP := openMySQLPool(t, testdb.MySQLDSN(t, name))
	storeP, err := gormstore.New(dbP, gormstore.Config{Table: pollTable})
	require.NoError(t, err)
	require.NoError(t, storeP.Migrate(ctx))
	pubP := newMemPublisher(0)
	const pollInterval = 500 * time.Millisecond
	fwP, err := outbox.NewForwarder(storeP, pubP, outbox.ForwarderConfig{
		PollInterval: pollInterval,
		MinBackoff:   100 * time.Millisecond,
		MaxBackoff:   time.Second,
		Logger:       log,
	})
	require.NoError(t, err)
	dbW := openMySQLPool(t, testdb.MySQLDSN(t, name))
	storeW, err := gormstore.New(dbW, gormstore.Config{Table: pollTable})
	require.NoError(t, err)
	trW, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: dbW, Store: storeW})
	require.NoError(t, err)
	// relayedByPoll commits one event from the writer pool and waits for
	// the poll-only forwarder to publish it: within a poll interval, or a
	// backoff if its last poll failed.
	relayedByPoll := func(id string) time.Duration {
		t.Helper()
		err := trW.Run(ctx, "Poll", func(ctx context.Context) error {
			return outbox.Emit(ctx, placed{ID: id, Key: "poll"})
		})
		require.NoError(t, err)
		committed := time.Now()
		eventually(t, 5*time.Second, 5*time.Millisecond, func() (bool, string) {
			return pubP.has(id), "not published"
		}, "event "+id+" not relayed: the poll-only forwarder does not poll (PollInterval is 500ms)")
		return time.Since(committed)
	}

	runCtx, stopForwarders := context.WithCancel(ctx)
	var fwDone sync.WaitGroup
	for _, f := range []*outbox.Forwarder{fw, fwP} {
		fwDone.Go(func() {
			if err := f.Run(runCtx); err != nil {
				t.Errorf("forwarder Run: %v", err)
			}
		})
	}
	t.Cleanup(func() { stopForwarders(); fwDone.Wait() })
	t.Logf("before the restart: event relayed by a poll in %v", relayedByPoll("before"))

	// Producers: one key each, commands in order, each retried until it
	// returns nil.
	prods := startRetryingProducers(ctx, t, b, restartProducers, mariadbProducerPause)

	// Restart once a quarter of the backlog is out.
	eventually(t, 60*time.Second, 5*time.Millisecond, func() (bool, string) {
		n := pub.count()
		return n >= mariadbBacklog/4, fmt.Sprintf("%d published", n)
	}, "backlog not draining before the restart")
	atRestart := pub.count()
	restartStart := time.Now()
	restartMariaDB(t, serverDSN)
	restartDone := time.Now()
	t.Logf("MariaDB restarted in %v with %d of %d backlog events published", restartDone.Sub(restartStart).Round(time.Millisecond), atRestart, mariadbBacklog)
	require.Less(t, atRestart, mariadbBacklog, "the backlog drained before the restart; the test did not restart MariaDB under a running forwarder")

	time.Sleep(time.Second) // producers go on after the restart
	prods.stop()

	// Everything committed is published, without restarting the forwarder.
	orders := waitAllPublished(ctx, t, db, pub, 90*time.Second, nil, "forwarder did not publish every committed event after the restart")

	ds := pub.snapshot()
	afterRestart := 0
	for _, d := range ds {
		if d.At.After(restartDone) {
			afterRestart++
		}
	}
	require.Positive(t, afterRestart, "nothing published after the restart")
	committed := make(map[string]bool, len(orders))
	for _, id := range orders {
		committed[id] = true
	}
	for _, d := range ds {
		require.True(t, committed[d.Event.ID], "event %s published but its command never committed", d.Event.ID)
	}
	for _, id := range prods.sent() {
		require.True(t, committed[id], "command %s returned nil but its order is not in the table", id)
	}
	requireDrained(ctx, t, fw, "after the restart")
	requireFirstDeliveriesInOrder(t, ds)
	t.Logf("%d commands sent by %d producers (%d dispatch errors retried), %d orders committed, %d deliveries (%d duplicates), %d after the restart",
		len(prods.sent()), restartProducers, prods.errs.Load(), len(orders), len(ds), len(ds)-len(orders), afterRestart)

	// The poll-only forwarder polls again by itself.
	t.Logf("after the restart: event relayed by a poll in %v", relayedByPoll("after"))
	requireDrained(ctx, t, fwP, "in "+pollTable)
}
