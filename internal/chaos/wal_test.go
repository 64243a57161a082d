//go:build chaos

package chaos_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"github.com/txoutbox/txoutbox/walrelay"
)

// The relay subprocess of the WAL tests is this test binary started with
// childEnv=walrelay, childDSNEnv set to the test schema's URL (with the
// subprocess's own application_name, which tags its deliveries and its
// connections) and childWALSlotEnv to the name of the slot and
// publication (walChaosConfig).
const childWALSlotEnv = "TXOUTBOX_CHAOS_WAL_SLOT"

// Shape of the WAL tests.
const (
	walBacklog        = 20000 // events committed before the first relay starts
	walBacklogKeys    = 50
	walBacklogCommand = 100 // events per backlog command
	walProducers      = 3   // producers committing one event per command while relays run
	// walStatusInterval is the relays' StatusInterval: what a killed
	// relay published in its last interval streams again.
	walStatusInterval = 100 * time.Millisecond
	// walPollInterval is how often a relay that stands by tries to
	// become the slot's reader.
	walPollInterval = 500 * time.Millisecond
	// walTakeoverLimit is the longest a standby may take to stream after
	// the reader was killed.
	walTakeoverLimit = 15 * time.Second
)

// walChaosConfig is the relay config of the WAL tests, the same in the
// test and in its relay subprocesses: slot and publication named name,
// messages with a prefix of their own.
func walChaosConfig(name string, log *slog.Logger) walrelay.Config {
	return walrelay.Config{
		Slot:           name,
		Publication:    name,
		Prefix:         "txoutbox-chaos-" + name,
		StatusInterval: walStatusInterval,
		Forwarder: outbox.ForwarderConfig{
			BatchSize:    killBatchSize,
			PollInterval: walPollInterval,
			MinBackoff:   50 * time.Millisecond,
			MaxBackoff:   500 * time.Millisecond,
			Logger:       log,
		},
	}
}

// setupWALSlot creates a slot and publication with a random name and
// returns their config. They are dropped when t ends, after the relays
// registered later stopped: a killed relay's walsender may hold the slot
// a moment longer, so the drop is tried again for up to 15s.
func setupWALSlot(t *testing.T, log *slog.Logger) walrelay.Config {
	t.Helper()
	cfg := walChaosConfig("txo_chaos_"+randomHex(6), log)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, walrelay.Setup(ctx, testdb.URL(), cfg), "walrelay.Setup (the server needs wal_level=logical: scripts/ensure-services.sh postgres)")
	t.Cleanup(func() {
		// A pool of its own: the test's connections may predate a restart.
		admin, err := sql.Open("pgx", testdb.URL())
		if err != nil {
			t.Errorf("drop slot %s: %v", cfg.Slot, err)
			return
		}
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		for {
			_, err = admin.ExecContext(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, cfg.Slot)
			if err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("drop replication slot %s: %v", cfg.Slot, err)
		}
		if _, err := admin.ExecContext(ctx, "DROP PUBLICATION IF EXISTS "+cfg.Publication); err != nil {
			t.Errorf("drop publication %s: %v", cfg.Publication, err)
		}
	})
	return cfg
}

// walStore returns a store on db in WAL mode on cfg's slot.
func walStore(t *testing.T, db *gorm.DB, cfg walrelay.Config) *gormstore.Store {
	t.Helper()
	require.NoError(t, gormstore.Migrate(context.Background(), db))
	store, err := gormstore.New(db, gormstore.Config{WAL: &gormstore.WALConfig{Slot: cfg.Slot, Prefix: cfg.Prefix}})
	require.NoError(t, err)
	return store
}

// createWALDeliveries creates the deliveries table of the relay
// subprocesses (deliveryLog writes to it), which also records which
// subprocess delivered (its connection's application_name) and when.
func createWALDeliveries(t *testing.T, db *gorm.DB) {
	t.Helper()
	require.NoError(t, db.Exec(`CREATE TABLE deliveries (
	seq      BIGSERIAL PRIMARY KEY,
	uuid     TEXT NOT NULL,
	event_id TEXT NOT NULL,
	key      TEXT NOT NULL,
	kseq     INTEGER NOT NULL,
	relay    TEXT NOT NULL DEFAULT current_setting('application_name'),
	at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
)`).Error)
}

// walDelivery is a row of the deliveries table.
type walDelivery struct {
	delivery
	Relay string // the subprocess that published it
}

// readWALDeliveries returns every delivery, in the order they were
// recorded.
func readWALDeliveries(t *testing.T, db *gorm.DB) []walDelivery {
	t.Helper()
	var rows []struct {
		UUID    string
		EventID string
		Key     string
		Kseq    int
		Relay   string
		At      time.Time
	}
	require.NoError(t, db.Raw(`SELECT uuid, event_id, key, kseq, relay, at FROM deliveries ORDER BY seq`).Scan(&rows).Error)
	ds := make([]walDelivery, len(rows))
	for i, r := range rows {
		ds[i] = walDelivery{delivery: delivery{UUID: r.UUID, Event: placed{ID: r.EventID, Key: r.Key, Seq: r.Kseq}, At: r.At}, Relay: r.Relay}
	}
	return ds
}

// distinctDelivered counts the events delivered at least once.
func distinctDelivered(t *testing.T, db *gorm.DB, where string) int64 {
	t.Helper()
	var n int64
	q := `SELECT count(DISTINCT event_id) FROM deliveries`
	if where != "" {
		q += " WHERE " + where
	}
	require.NoError(t, db.Raw(q).Scan(&n).Error)
	return n
}

// walCommits records the events of the commands that committed, in
// commit order per producer, and for each an upper bound of the end of
// its transaction in the WAL: the server's WAL write position read after
// the commit returned.
type walCommits struct {
	mu    sync.Mutex
	ids   []string
	upper map[string]int64
}

func newWALCommits() *walCommits { return &walCommits{upper: map[string]int64{}} }

// commit runs a command on tr that emits evs and records them once it
// committed.
func (c *walCommits) commit(ctx context.Context, tr *middleware.Transactional, db *gorm.DB, evs ...placed) error {
	err := tr.Run(ctx, "Place", func(ctx context.Context) error {
		anys := make([]any, len(evs))
		for i, e := range evs {
			anys[i] = e
		}
		return outbox.Emit(ctx, anys...)
	})
	if err != nil {
		return err
	}
	var lsn int64
	if err := db.WithContext(ctx).Raw(`SELECT (pg_current_wal_lsn() - '0/0')::bigint`).Scan(&lsn).Error; err != nil {
		return fmt.Errorf("read the WAL position after the commit: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range evs {
		c.ids = append(c.ids, e.ID)
		c.upper[e.ID] = lsn
	}
	return nil
}

func (c *walCommits) snapshot() (ids []string, upper map[string]int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	upper = make(map[string]int64, len(c.upper))
	for k, v := range c.upper {
		upper[k] = v
	}
	return append([]string(nil), c.ids...), upper
}

func (c *walCommits) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}

// commitWALBacklog commits walBacklog events on walBacklogKeys keys, IDs
// b-0 ... in commands of walBacklogCommand.
func commitWALBacklog(t *testing.T, ctx context.Context, c *walCommits, tr *middleware.Transactional, db *gorm.DB) {
	t.Helper()
	for cmd := range walBacklog / walBacklogCommand {
		evs := make([]placed, walBacklogCommand)
		for i := range evs {
			n := cmd*walBacklogCommand + i
			evs[i] = placed{ID: fmt.Sprintf("b-%d", n), Key: fmt.Sprintf("b%02d", n%walBacklogKeys), Seq: n / walBacklogKeys}
		}
		require.NoError(t, c.commit(ctx, tr, db, evs...), "backlog command %d", cmd)
	}
}

// startWALProducers starts walProducers producers, each committing one
// event per command on a key of its own (p0, p1, ...) until the returned
// stop is called, which waits for them. A failed command fails the test.
func startWALProducers(t *testing.T, ctx context.Context, c *walCommits, tr *middleware.Transactional, db *gorm.DB) (stop func()) {
	t.Helper()
	var (
		stopping atomic.Bool
		wg       sync.WaitGroup
		once     sync.Once
	)
	for w := range walProducers {
		wg.Go(func() {
			for seq := 0; !stopping.Load(); seq++ {
				e := placed{ID: fmt.Sprintf("p%d-%d", w, seq), Key: fmt.Sprintf("p%d", w), Seq: seq}
				if err := c.commit(ctx, tr, db, e); err != nil {
					if ctx.Err() == nil { // else the test is over
						t.Errorf("producer %d: command %s: %v", w, e.ID, err)
					}
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	stop = func() {
		once.Do(func() {
			stopping.Store(true)
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	return stop
}

// walChild is a relay subprocess (runWALRelayChild).
type walChild struct {
	id   string // its application_name
	cmd  *exec.Cmd
	out  lockedBuffer
	done bool // waited for
}

// startWALChild starts a relay subprocess named id on slot, publishing
// to the deliveries table of the schema at dsn. It is killed when t ends
// if it still runs, and its output logged if t failed.
func startWALChild(t *testing.T, dsn, slot, id string) *walChild {
	t.Helper()
	c := &walChild{id: id}
	c.cmd = exec.Command(os.Args[0], "-test.run=^$")
	c.cmd.Env = append(os.Environ(), childEnv+"=walrelay", childDSNEnv+"="+withAppName(t, dsn, id), childWALSlotEnv+"="+slot)
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
	require.NoError(t, c.cmd.Start())
	t.Cleanup(func() {
		if !c.done {
			_ = c.cmd.Process.Kill()
			_ = c.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("relay subprocess %s output:\n%s", c.id, c.out.String())
		}
	})
	return c
}

// kill kills the subprocess with SIGKILL and waits for it.
func (c *walChild) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGKILL))
	err := c.cmd.Wait()
	c.done = true
	require.Error(t, err, "relay subprocess %s must die of SIGKILL", c.id)
}

// stop stops the subprocess with SIGINT and requires a clean exit.
func (c *walChild) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, c.cmd.Process.Signal(os.Interrupt))
	err := c.cmd.Wait()
	c.done = true
	require.NoError(t, err, "relay subprocess %s must stop cleanly on SIGINT:\n%s", c.id, c.out.String())
}

// waitConnectionsGone waits until the server has no connection named
// app left: a killed process's backends (its walsender, an INSERT it
// sent before dying) end a moment after it.
func waitConnectionsGone(t *testing.T, db *gorm.DB, app string) {
	t.Helper()
	eventually(t, 15*time.Second, 10*time.Millisecond, func() (bool, string) {
		n := testdb.Count(t, db, "pg_stat_activity", "application_name = ?", app)
		return n == 0, fmt.Sprintf("%d connections", n)
	}, "connections of killed relay "+app+" still open")
}

// slotConfirmedLSN returns the confirmed position of slot.
func slotConfirmedLSN(t *testing.T, db *gorm.DB, slot string) int64 {
	t.Helper()
	var lsn int64
	require.NoError(t, db.Raw(`SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = ?`, slot).Scan(&lsn).Error)
	return lsn
}

// slotReader returns the application_name of the process streaming from
// slot, "" when none does.
func slotReader(t *testing.T, db *gorm.DB, slot string) string {
	t.Helper()
	var names []string
	require.NoError(t, db.Raw(`SELECT a.application_name FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = ?`, slot).Scan(&names).Error)
	if len(names) == 0 {
		return ""
	}
	return names[0]
}

// requireWALDeliveries checks the deliveries against the committed
// events: each committed event delivered at least once, always with the
// same message UUID, no event that was not committed, and per key the
// first deliveries in commit order. It returns the number of duplicates.
func requireWALDeliveries(t *testing.T, ds []walDelivery, committed []string) int {
	t.Helper()
	isCommitted := make(map[string]bool, len(committed))
	for _, id := range committed {
		isCommitted[id] = true
	}
	uuidOf := map[string]string{}
	plain := make([]delivery, len(ds))
	for i, d := range ds {
		require.True(t, isCommitted[d.Event.ID], "event %s delivered by %s but its command never committed", d.Event.ID, d.Relay)
		if u, ok := uuidOf[d.Event.ID]; ok {
			require.Equal(t, u, d.UUID, "event %s redelivered with another message UUID", d.Event.ID)
		}
		uuidOf[d.Event.ID] = d.UUID
		plain[i] = d.delivery
	}
	missing := 0
	var example string
	for _, id := range committed {
		if _, ok := uuidOf[id]; !ok {
			if missing == 0 {
				example = id
			}
			missing++
		}
	}
	require.Zero(t, missing, "%d of %d committed events never delivered, e.g. %s", missing, len(committed), example)
	requireFirstDeliveriesInOrder(t, plain)
	return len(ds) - len(uuidOf)
}

// TestSIGKILLWALRelay kills a relay subprocess with SIGKILL in the middle
// of the stream, five times, starting a new one each time, while a
// backlog of commands streams and producers commit more through the
// middleware on a store in WAL mode; a last subprocess drains the slot.
// Every committed event is delivered, per key the first deliveries follow
// the commit order, and an event is delivered again only by a later
// subprocess and only if its transaction ended past the slot's confirmed
// position when the earlier one died: what was published and not yet
// confirmed. Each subprocess must have confirmed progress before its
// kill.
func TestSIGKILLWALRelay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log, _ := newRecordingLogger()
	db, schema := testdb.OpenPostgres(t)
	cfg := setupWALSlot(t, log)
	createWALDeliveries(t, db)
	tr, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: walStore(t, db, cfg)})
	require.NoError(t, err)
	commits := newWALCommits()
	commitWALBacklog(t, ctx, commits, tr, db)
	stopProducers := startWALProducers(t, ctx, commits, tr, db)
	dsn := testdb.SchemaURL(t, schema)

	var (
		relays    []string // in the order they ran
		confirmed []int64  // the slot's confirmed position after each kill
	)
	prev := slotConfirmedLSN(t, db, cfg.Slot)
	for k := range killCount {
		id := fmt.Sprintf("walrelay-%d-%s", k, randomHex(3))
		relays = append(relays, id)
		c := startWALChild(t, dsn, cfg.Slot, id)
		// Killed 300-600 ms after its first delivery: past a few status
		// updates (every 100 ms), in the middle of its batches.
		eventually(t, 30*time.Second, 5*time.Millisecond, func() (bool, string) {
			n := testdb.Count(t, db, "deliveries", "relay = ?", id)
			return n > 0, fmt.Sprintf("%d deliveries", n)
		}, "relay subprocess "+id+" delivered nothing")
		time.Sleep(time.Duration(300+rand.IntN(301)) * time.Millisecond)
		c.kill(t)
		waitConnectionsGone(t, db, id)
		lsn := slotConfirmedLSN(t, db, cfg.Slot)
		require.Greater(t, lsn, prev, "kill %d: the slot's confirmed position did not move while %s streamed: the relay confirms nothing it published", k+1, id)
		prev = lsn
		confirmed = append(confirmed, lsn)
		t.Logf("kill %d of %s: %d deliveries recorded, %d distinct of %d committed, slot confirmed at %d", k+1, id,
			testdb.Count(t, db, "deliveries", ""), distinctDelivered(t, db, ""), commits.count(), lsn)
	}
	backlogOut := distinctDelivered(t, db, "event_id LIKE 'b-%'")
	require.Less(t, backlogOut, int64(walBacklog), "the backlog was out before the last kill; the kills no longer land in the middle of the stream (slow the subprocess's publisher)")
	stopProducers()

	// The last subprocess drains the slot and stops gracefully.
	last := fmt.Sprintf("walrelay-last-%s", randomHex(3))
	relays = append(relays, last)
	c := startWALChild(t, dsn, cfg.Slot, last)
	committed, upper := commits.snapshot()
	eventually(t, 30*time.Second, 50*time.Millisecond, func() (bool, string) {
		n := distinctDelivered(t, db, "")
		return n >= int64(len(committed)), fmt.Sprintf("%d of %d committed events delivered", n, len(committed))
	}, "not every committed event was delivered after the kills")
	c.stop(t)

	ds := readWALDeliveries(t, db)
	dups := requireWALDeliveries(t, ds, committed)

	// Each subprocess streams from the position the slot confirmed when
	// the one before it died: it delivers only events whose transaction
	// ended past it, and a redelivery repeats an earlier subprocess's.
	order := map[string]int{}
	for i, id := range relays {
		order[id] = i
	}
	firstBy := map[string]int{} // event ID -> index in relays of its first delivery
	unconfirmed := 0            // first deliveries that the next subprocess may repeat
	for _, d := range ds {
		j, ok := order[d.Relay]
		require.True(t, ok, "delivery of %s by unknown relay %q", d.Event.ID, d.Relay)
		if j > 0 {
			require.Greater(t, upper[d.Event.ID], confirmed[j-1],
				"event %s delivered by %s though its transaction ended (by WAL position %d) before the position the slot confirmed when %s died (%d)",
				d.Event.ID, d.Relay, upper[d.Event.ID], relays[j-1], confirmed[j-1])
		}
		i, seen := firstBy[d.Event.ID]
		if !seen {
			firstBy[d.Event.ID] = j
			if j < len(confirmed) && upper[d.Event.ID] > confirmed[j] {
				unconfirmed++
			}
			continue
		}
		require.Less(t, i, j, "event %s delivered twice by %s, which was never restarted", d.Event.ID, d.Relay)
	}
	t.Logf("%d deliveries for %d committed events (%d of the backlog, %d from producers) after %d kills: %d duplicates; %d first deliveries were past the confirmed position at a kill",
		len(ds), len(committed), walBacklog, len(committed)-walBacklog, killCount, dups, unconfirmed)
}

// TestWALRelayStandbyTakesOverAfterSIGKILL starts two relay subprocesses
// on one slot at once while a backlog streams and producers commit. Only
// one streams: the server never shows two of their walsenders past
// start-up, and the deliveries all come from one until it is killed with
// SIGKILL, then all from the other. The standby takes over within
// walTakeoverLimit (the time is logged), nothing is lost, per key the
// first deliveries follow the commit order, and the only duplicates are
// events the killed one delivered.
func TestWALRelayStandbyTakesOverAfterSIGKILL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log, _ := newRecordingLogger()
	db, schema := testdb.OpenPostgres(t)
	cfg := setupWALSlot(t, log)
	createWALDeliveries(t, db)
	tr, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: walStore(t, db, cfg)})
	require.NoError(t, err)
	commits := newWALCommits()
	commitWALBacklog(t, ctx, commits, tr, db)
	stopProducers := startWALProducers(t, ctx, commits, tr, db)
	dsn := testdb.SchemaURL(t, schema)

	suffix := randomHex(3)
	ids := []string{"walrelay-a-" + suffix, "walrelay-b-" + suffix}
	children := map[string]*walChild{}
	for _, id := range ids {
		children[id] = startWALChild(t, dsn, cfg.Slot, id)
	}

	// Throughout, at most one of the two has a walsender that started
	// streaming (pg_stat_replication's state leaves "startup" at
	// START_REPLICATION; a standby's tries stay there).
	monDB := openPostgres(t, testdb.URL())
	var (
		maxStreaming atomic.Int64
		monitorStop  = make(chan struct{})
		monitorDone  = make(chan struct{})
	)
	go func() {
		defer close(monitorDone)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-monitorStop:
				return
			case <-tick.C:
			}
			var n int64
			if err := monDB.Raw(`SELECT count(*) FROM pg_stat_replication WHERE application_name IN (?, ?) AND state <> 'startup'`, ids[0], ids[1]).Scan(&n).Error; err == nil && n > maxStreaming.Load() {
				maxStreaming.Store(n)
			}
		}
	}()
	stopMonitor := sync.OnceFunc(func() { close(monitorStop); <-monitorDone })
	t.Cleanup(stopMonitor)

	var active string
	eventually(t, 30*time.Second, 10*time.Millisecond, func() (bool, string) {
		active = slotReader(t, db, cfg.Slot)
		return active != "", "no reader"
	}, "neither relay subprocess reads the slot")
	require.Contains(t, ids, active, "the slot is read by another process")
	standby := ids[0]
	if active == ids[0] {
		standby = ids[1]
	}
	eventually(t, 15*time.Second, 20*time.Millisecond, func() (bool, string) {
		return strings.Contains(children[standby].out.String(), "standing by"), "standby has not logged that it stands by"
	}, "relay subprocess "+standby+" did not stand by")
	eventually(t, 30*time.Second, 10*time.Millisecond, func() (bool, string) {
		n := testdb.Count(t, db, "deliveries", "relay = ?", active)
		return n >= 2000, fmt.Sprintf("%d deliveries", n)
	}, "the reader "+active+" made little progress")
	require.Zero(t, testdb.Count(t, db, "deliveries", "relay = ?", standby), "the standby %s published while %s read the slot", standby, active)
	require.Less(t, distinctDelivered(t, db, ""), int64(commits.count()), "everything was delivered before the kill; the standby has nothing to take over")

	// At a random moment of the standby's polls.
	time.Sleep(time.Duration(rand.IntN(int(walPollInterval/time.Millisecond))) * time.Millisecond)
	killed := time.Now()
	children[active].kill(t)
	var tookSlot, delivered time.Duration
	eventually(t, walTakeoverLimit, 10*time.Millisecond, func() (bool, string) {
		if tookSlot == 0 && slotReader(t, db, cfg.Slot) == standby {
			tookSlot = time.Since(killed)
		}
		if delivered == 0 && testdb.Count(t, db, "deliveries", "relay = ?", standby) > 0 {
			delivered = time.Since(killed)
		}
		return tookSlot != 0 && delivered != 0, fmt.Sprintf("streams after %v, first delivery after %v (0: not yet)", tookSlot, delivered)
	}, "the standby "+standby+" did not take over after the reader was killed")
	t.Logf("the standby %s streamed %v after %s was killed, and delivered %v after it (PollInterval %v)", standby, tookSlot.Round(time.Millisecond), active, delivered.Round(time.Millisecond), walPollInterval)
	waitConnectionsGone(t, db, active)

	time.Sleep(time.Second) // the producers go on under the new reader
	stopProducers()
	committed, _ := commits.snapshot()
	eventually(t, 30*time.Second, 50*time.Millisecond, func() (bool, string) {
		n := distinctDelivered(t, db, "")
		return n >= int64(len(committed)), fmt.Sprintf("%d of %d committed events delivered", n, len(committed))
	}, "the standby did not deliver every committed event")
	children[standby].stop(t)
	stopMonitor()
	require.LessOrEqual(t, maxStreaming.Load(), int64(1), "two relays streamed from slot %s at once", cfg.Slot)

	ds := readWALDeliveries(t, db)
	dups := requireWALDeliveries(t, ds, committed)
	// One reader at a time: every delivery of the killed one comes before
	// every delivery of the standby.
	switched := -1
	byActive := map[string]bool{}
	for i, d := range ds {
		switch d.Relay {
		case active:
			require.Equal(t, -1, switched, "delivery %d (event %s) by %s after %s had begun to publish at delivery %d", i, d.Event.ID, active, standby, switched)
			require.False(t, byActive[d.Event.ID], "event %s delivered twice by %s", d.Event.ID, active)
			byActive[d.Event.ID] = true
		case standby:
			if switched == -1 {
				switched = i
			}
		default:
			t.Fatalf("delivery %d (event %s) by unknown relay %q", i, d.Event.ID, d.Relay)
		}
	}
	require.NotEqual(t, -1, switched, "no delivery by the standby %s", standby)
	byStandby := map[string]bool{}
	for _, d := range ds[switched:] {
		require.False(t, byStandby[d.Event.ID], "event %s delivered twice by %s", d.Event.ID, standby)
		byStandby[d.Event.ID] = true
	}
	t.Logf("%d deliveries for %d committed events: %d by %s before its kill, %d by %s; %d duplicates, all of events %s delivered before its kill",
		len(ds), len(committed), switched, active, len(ds)-switched, standby, dups, active)
}

// TestWALRelayPostgresRestart restarts PostgreSQL while a relay in this
// process streams a backlog and producers commit through the middleware
// on a store in WAL mode, retrying commands that fail. The relay must
// reconnect by itself and Run must not fail: every committed command's
// event (the orders table holds the committed commands) is published, no
// event of an uncommitted one is, per key the first deliveries follow the
// commit order, and an event is published twice only if it was first
// published before the relay resumed. Before PostgreSQL 17 a server
// restart may take the slot back to an older confirmed position than the
// relay's last (the server wrote the slot to disk only when more than
// the confirmed position changed), so the duplicates are counted, not
// bounded.
func TestWALRelayPostgresRestart(t *testing.T) {
	version, cluster := pgCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log, logs := newRecordingLogger()
	db, _ := testdb.OpenPostgres(t)
	cfg := setupWALSlot(t, log)
	// Cleanups run last-in first-out: PostgreSQL is up again before the
	// slot and the schema are dropped.
	t.Cleanup(func() { ensurePostgres(t, version, cluster) })
	require.NoError(t, db.Exec(`CREATE TABLE orders (id TEXT PRIMARY KEY)`).Error)
	tr, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: walStore(t, db, cfg)})
	require.NoError(t, err)
	b := bus.New(tr.Middleware())
	registerPlaceOrder(t, b, insertOrderPostgres)

	// The backlog: orders b-0 ... with their events on walBacklogKeys keys.
	commitBacklog(ctx, t, tr, walBacklog, walBacklogCommand, walBacklogKeys)

	// The relay, with a publisher of 20 ms per call: the backlog takes a
	// few seconds, and the restart hits it in the middle.
	pub := newMemPublisher(20 * time.Millisecond)
	rcfg := cfg
	rcfg.Forwarder.MinBackoff, rcfg.Forwarder.MaxBackoff = 100*time.Millisecond, time.Second
	relay, err := walrelay.NewRelay(testdb.URL(), pub, rcfg)
	require.NoError(t, err)
	runCtx, stopRun := context.WithCancel(ctx)
	var runErr error
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		runErr = relay.Run(runCtx)
	}()
	// requireRunning fails the test if Run returned.
	requireRunning := func() {
		t.Helper()
		select {
		case <-runDone:
			t.Fatalf("Run returned while it should relay: %v", runErr)
		default:
		}
	}
	stopRelay := sync.OnceValue(func() error {
		stopRun()
		select {
		case <-runDone:
			return runErr
		case <-time.After(30 * time.Second):
			return errors.New("walrelay: Run did not return within 30s of its context's end")
		}
	})
	t.Cleanup(func() { _ = stopRelay() })

	// Producers: one key each, commands in order, each retried until it
	// returns nil.
	prods := startRetryingProducers(ctx, t, b, walProducers, 5*time.Millisecond)

	eventually(t, 30*time.Second, 5*time.Millisecond, func() (bool, string) {
		n := pub.count()
		return n >= walBacklog/4, fmt.Sprintf("%d published", n)
	}, "backlog not streaming before the restart")
	atRestart := pub.count()
	restartStart := time.Now()
	restartPostgres(t, version, cluster)
	restartDone := time.Now()
	require.Less(t, atRestart, walBacklog, "the backlog was out before the restart; the test did not restart PostgreSQL under a streaming relay")

	time.Sleep(time.Second) // producers go on after the restart
	prods.stop()

	orders := waitAllPublished(ctx, t, db, pub, 30*time.Second, requireRunning, "the relay did not publish every committed event after the restart")
	time.Sleep(300 * time.Millisecond) // a redelivery in flight lands now
	require.NoError(t, stopRelay(), "Run")

	ds := pub.snapshot()
	committed := make(map[string]bool, len(orders))
	for _, id := range orders {
		committed[id] = true
	}
	for _, id := range prods.sent() {
		require.True(t, committed[id], "command %s returned nil but its order is not in the table", id)
	}
	for _, d := range ds {
		require.True(t, committed[d.Event.ID], "event %s published but its command never committed", d.Event.ID)
	}
	requireFirstDeliveriesInOrder(t, ds)
	// The outage as the relay saw it: the longest pause between two
	// publishes from the restart on. What it published before the pause
	// it published while PostgreSQL shut down.
	var gapFrom, gapTo time.Time
	duringShutdown, sinceRestart := 0, 0
	prevAt := time.Time{}
	for _, d := range ds {
		if !d.At.Before(restartStart) {
			if !prevAt.IsZero() && d.At.Sub(prevAt) > gapTo.Sub(gapFrom) {
				gapFrom, gapTo = prevAt, d.At
				duringShutdown = sinceRestart
			}
			sinceRestart++
		}
		prevAt = d.At
	}
	require.False(t, gapTo.IsZero(), "nothing published after the restart")
	// Once it streams again, the slot repeats at most what was published
	// before: an event first published after the pause comes once.
	first := map[string]time.Time{}
	dups := 0
	for _, d := range ds {
		at, ok := first[d.Event.ID]
		if !ok {
			first[d.Event.ID] = d.At
			continue
		}
		dups++
		require.True(t, at.Before(gapTo), "event %s published again at %s though first published after the relay resumed (%s, at %s)",
			d.Event.ID, d.At.Format(time.StampMicro), at.Format(time.StampMicro), gapTo.Format(time.StampMicro))
	}
	t.Logf("PostgreSQL %s/%s restarted in %v with %d of %d backlog events published; the relay published %d events while it shut down, then nothing for %v, resuming %v after the restart began; %d warnings logged",
		version, cluster, restartDone.Sub(restartStart).Round(time.Millisecond), atRestart, walBacklog, duringShutdown,
		gapTo.Sub(gapFrom).Round(time.Millisecond), gapTo.Sub(restartStart).Round(time.Millisecond),
		logs.count(slog.LevelWarn, restartStart, time.Now()))
	t.Logf("%d commands sent by %d producers (%d dispatch errors retried), %d orders committed, %d deliveries (%d duplicates, all of events first published before the relay resumed)",
		len(prods.sent()), walProducers, prods.errs.Load(), len(orders), len(ds), dups)
}

// runWALRelayChild is the relay subprocess of the WAL tests: a relay on
// the slot childWALSlotEnv of the database at childDSNEnv, publishing to
// the deliveries table there through a deliveryLog, until SIGINT or
// SIGTERM.
func runWALRelayChild() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "chaos walrelay child:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dsn := os.Getenv(childDSNEnv)
	logDB, err := sql.Open("pgx", dsn)
	if err != nil {
		return fail(err)
	}
	defer logDB.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	pub := lagging{Publisher: &deliveryLog{db: logDB}, lag: killConfirmLag}
	r, err := walrelay.NewRelay(dsn, pub, walChaosConfig(os.Getenv(childWALSlotEnv), log))
	if err != nil {
		return fail(err)
	}
	if err := r.Run(ctx); err != nil {
		return fail(err)
	}
	return 0
}
