//go:build chaos

package chaos_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// placeOrder is the command of TestPostgresRestart and TestMariaDBRestart.
// Its handler is idempotent, so a producer can dispatch it again when it
// does not know whether the first try committed: it saves the order and
// emits placed only if the order is new.
type placeOrder struct{ placed }

// The handler's INSERT of an order, which affects no row when the order
// exists. On MySQL an update that changes nothing counts no row either (the
// DSN does not set clientFoundRows).
const (
	insertOrderPostgres = `INSERT INTO orders (id) VALUES (?) ON CONFLICT DO NOTHING`
	insertOrderMySQL    = `INSERT INTO orders (id) VALUES (?) ON DUPLICATE KEY UPDATE id = id`
)

func registerPlaceOrder(t *testing.T, b *bus.Bus, insertOrder string) {
	t.Helper()
	require.NoError(t, bus.Register(b, func(ctx context.Context, cmd placeOrder) error {
		tx, err := outbox.Tx(ctx)
		if err != nil {
			return err
		}
		res := tx.Exec(insertOrder, cmd.ID)
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return nil // committed by an earlier try whose outcome we did not learn
		}
		return outbox.Emit(ctx, cmd.placed)
	}))
}

// commitBacklog commits orders b-0 ... b-(n-1) and their events, perCommand
// orders a command, the events on keys partition keys ("b00", "b01", ...),
// in order: a backlog for the relay under test.
func commitBacklog(ctx context.Context, t *testing.T, tr *middleware.Transactional, n, perCommand, keys int) {
	t.Helper()
	q := "INSERT INTO orders (id) VALUES " + strings.TrimSuffix(strings.Repeat("(?),", perCommand), ",")
	for c := range n / perCommand {
		lo := c * perCommand
		err := tr.Run(ctx, "Backlog", func(ctx context.Context) error {
			tx, err := outbox.Tx(ctx)
			if err != nil {
				return err
			}
			ids := make([]any, perCommand)
			evs := make([]any, perCommand)
			for i := range perCommand {
				n := lo + i
				ids[i] = fmt.Sprintf("b-%d", n)
				evs[i] = placed{ID: fmt.Sprintf("b-%d", n), Key: fmt.Sprintf("b%02d", n%keys), Seq: n / keys}
			}
			if err := tx.Exec(q, ids...).Error; err != nil {
				return err
			}
			return outbox.Emit(ctx, evs...)
		})
		require.NoError(t, err, "backlog command %d", c)
	}
}

// waitAllPublished waits until pub has published every order in db's
// orders table and returns their IDs. check, when not nil, runs at each
// look (to fail the test at once when the relay stopped).
func waitAllPublished(ctx context.Context, t *testing.T, db *gorm.DB, pub *memPublisher, within time.Duration, check func(), what string) []string {
	t.Helper()
	var orders []string
	eventually(t, within, 100*time.Millisecond, func() (bool, string) {
		if check != nil {
			check()
		}
		orders = orders[:0]
		if err := db.WithContext(ctx).Raw(`SELECT id FROM orders`).Scan(&orders).Error; err != nil {
			return false, err.Error()
		}
		missing := 0
		for _, id := range orders {
			if !pub.has(id) {
				missing++
			}
		}
		return missing == 0, fmt.Sprintf("%d of %d committed orders not published", missing, len(orders))
	}, what)
	return orders
}

// Shape of TestPostgresRestart.
const (
	restartBacklog   = 20000
	restartKeys      = 50
	restartProducers = 4
	listenTable      = "chaos_listen_outbox"
)

// TestPostgresRestart restarts PostgreSQL while a forwarder drains a
// backlog and producers commit through the middleware, retrying commands
// that fail. Without restarting anything, the forwarder must go on: every
// committed event (orders table = committed commands) is published, no
// event of an uncommitted command is, per key the first deliveries follow
// the commit order, and the outbox ends empty. A second forwarder that can
// only be woken by its LISTEN connection (PollInterval 30s, no in-process
// wake, writes from another pool) must relay a commit made after the
// restart within seconds: its listener reconnected.
func TestPostgresRestart(t *testing.T) {
	version, cluster := pgCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, schema := testdb.OpenPostgres(t)
	// Cleanups run last-in first-out: PostgreSQL is up again before the
	// schema is dropped.
	t.Cleanup(func() { ensurePostgres(t, version, cluster) })
	require.NoError(t, gormstore.Migrate(ctx, db))
	require.NoError(t, db.Exec(`CREATE TABLE orders (id TEXT PRIMARY KEY)`).Error)
	store, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)

	// The main forwarder, woken in process by the middleware. Its publisher
	// takes 20 ms per call, so the backlog drains in a few seconds and the
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
	tr, err := middleware.NewTransactional(middleware.TransactionalConfig{
		DB: db, Store: store,
		AfterCommit: []func(middleware.AfterCommitParams){func(middleware.AfterCommitParams) { fw.Wake() }},
	})
	require.NoError(t, err)
	b := bus.New(tr.Middleware())
	registerPlaceOrder(t, b, insertOrderPostgres)

	// The backlog: orders b-0 ... b-19999 with their events on 50 keys.
	commitBacklog(ctx, t, tr, restartBacklog, 1000, restartKeys)

	// The listen-only forwarder, on a table of its own in the same schema.
	listenApp := "txoutbox_chaos_listen_" + randomHex(4)
	dbL := openPostgres(t, withAppName(t, testdb.SchemaURL(t, schema), listenApp))
	storeL, err := gormstore.New(dbL, gormstore.Config{Table: listenTable})
	require.NoError(t, err)
	require.NoError(t, storeL.Migrate(ctx))
	pubL := newMemPublisher(0)
	fwL, err := outbox.NewForwarder(storeL, pubL, outbox.ForwarderConfig{
		PollInterval: 30 * time.Second,
		MinBackoff:   100 * time.Millisecond,
		MaxBackoff:   time.Second,
		Logger:       log,
	})
	require.NoError(t, err)
	dbW := openPostgres(t, testdb.SchemaURL(t, schema))
	storeW, err := gormstore.New(dbW, gormstore.Config{Table: listenTable})
	require.NoError(t, err)
	trW, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: dbW, Store: storeW})
	require.NoError(t, err)
	listenerPID := func() int64 {
		var pid int64
		_ = db.Raw(`SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE application_name = ? AND query LIKE 'LISTEN %'`, listenApp).Scan(&pid).Error
		return pid
	}
	// relayedByNotify commits one event from the writer pool and waits for
	// the listen-only forwarder to publish it, far sooner than its poll.
	relayedByNotify := func(id string) time.Duration {
		t.Helper()
		err := trW.Run(ctx, "Listen", func(ctx context.Context) error {
			return outbox.Emit(ctx, placed{ID: id, Key: "listen"})
		})
		require.NoError(t, err)
		committed := time.Now()
		eventually(t, 5*time.Second, 5*time.Millisecond, func() (bool, string) {
			return pubL.has(id), "not published"
		}, "event "+id+" not relayed: the forwarder's LISTEN connection does not wake it (PollInterval is 30s)")
		return time.Since(committed)
	}

	runCtx, stopForwarders := context.WithCancel(ctx)
	var fwDone sync.WaitGroup
	for _, f := range []*outbox.Forwarder{fw, fwL} {
		fwDone.Go(func() {
			if err := f.Run(runCtx); err != nil {
				t.Errorf("forwarder Run: %v", err)
			}
		})
	}
	t.Cleanup(func() { stopForwarders(); fwDone.Wait() })

	var oldPID int64
	eventually(t, 10*time.Second, 20*time.Millisecond, func() (bool, string) {
		oldPID = listenerPID()
		return oldPID != 0, "no LISTEN connection"
	}, "listen-only forwarder never listened")
	t.Logf("before the restart: event relayed by NOTIFY in %v", relayedByNotify("before"))

	// Producers: one key each, commands in order, each retried until it
	// returns nil.
	prods := startRetryingProducers(ctx, t, b, restartProducers, 2*time.Millisecond)

	// Restart once a quarter of the backlog is out.
	eventually(t, 30*time.Second, 5*time.Millisecond, func() (bool, string) {
		n := pub.count()
		return n >= restartBacklog/4, fmt.Sprintf("%d published", n)
	}, "backlog not draining before the restart")
	atRestart := pub.count()
	restartStart := time.Now()
	restartPostgres(t, version, cluster)
	restartDone := time.Now()
	t.Logf("PostgreSQL %s/%s restarted in %v with %d of %d backlog events published", version, cluster, restartDone.Sub(restartStart).Round(time.Millisecond), atRestart, restartBacklog)
	require.Less(t, atRestart, restartBacklog, "the backlog drained before the restart; the test did not restart PostgreSQL under a running forwarder")

	time.Sleep(time.Second) // producers go on after the restart
	prods.stop()

	// Everything committed is published, without restarting the forwarder.
	orders := waitAllPublished(ctx, t, db, pub, 60*time.Second, nil, "forwarder did not publish every committed event after the restart")

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

	// The listen-only forwarder's LISTEN connection came back by itself.
	var newPID int64
	eventually(t, 30*time.Second, 20*time.Millisecond, func() (bool, string) {
		newPID = listenerPID()
		return newPID != 0 && newPID != oldPID, fmt.Sprintf("LISTEN connection pid %d (before the restart %d)", newPID, oldPID)
	}, "listen-only forwarder did not LISTEN again after the restart")
	time.Sleep(2 * time.Second) // let its relay loop leave any backoff and wait for a wake-up
	t.Logf("after the restart: event relayed by NOTIFY in %v", relayedByNotify("after"))
}
