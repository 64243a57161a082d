package gormstore

import (
	"context"
	"sync"
	"time"

	"github.com/txoutbox/txoutbox/outbox"
)

var _ outbox.CommitNotifier = (*Store)(nil)

// notifyTimeout bounds one NOTIFY round trip.
const notifyTimeout = 5 * time.Second

// notifyInterval is the least time between two NOTIFYs of one store. The
// first commit after a quiet spell is notified at once; under a steady
// load a forwarder in another process learns of new rows up to this much
// later, while it is mostly busy draining anyway. Each NOTIFY is a
// transaction and a round trip of its own: at one per millisecond they
// made a command with one event 1.09× a command without the outbox at
// 0.5 ms round-trip time, against 0.98× without them
// (BenchmarkDispatch/rtt=0.5ms).
const notifyInterval = 5 * time.Millisecond

// NotifyCommitted tells forwarders in other processes that rows were
// committed: on PostgreSQL it sends a NOTIFY on the table's channel, after
// the commit and outside the command's transaction. The transactional
// middleware calls it after each commit that saved events; call it
// yourself after committing a transaction of your own (outbox.WithTx)
// that saved events, or let forwarders find them by polling.
//
// It never blocks: the NOTIFY is sent from a goroutine, and calls made
// while one is in flight are folded into one more. A NOTIFY inside the
// command's transaction would make PostgreSQL commit notifying
// transactions one at a time (it holds a global lock through the commit's
// WAL flush), which more than doubled the cost of a command under
// concurrency (docs/benchmarks.md). It does nothing on MySQL and SQLite,
// or with Config.NoNotify.
func (s *Store) NotifyCommitted() {
	s.drv.notifyCommitted()
}

// Listen calls wake whenever a transaction that saved outbox rows commits
// (PostgreSQL NOTIFY, see NotifyCommitted), until ctx ends or the
// connection fails. It holds one connection of the pool while it runs. On
// MySQL and SQLite it returns outbox.ErrListenUnsupported at once:
// forwarders there rely on in-process wake-ups and polling.
func (s *Store) Listen(ctx context.Context, wake func()) error { return s.drv.listen(ctx, wake) }

// notifier runs send in one goroutine at a time; kicks that arrive while it
// runs make it run once more. The goroutine ends when nothing is pending.
type notifier struct {
	mu      sync.Mutex
	running bool
	pending bool
	send    func()
}

func (n *notifier) kick() {
	n.mu.Lock()
	if n.running {
		n.pending = true
		n.mu.Unlock()
		return
	}
	n.running = true
	n.mu.Unlock()
	go func() {
		for {
			n.send()
			// At most one NOTIFY per notifyInterval: under load the
			// forwarders are busy anyway, and a burst still ends with one.
			time.Sleep(notifyInterval)
			n.mu.Lock()
			if !n.pending {
				n.running = false
				n.mu.Unlock()
				return
			}
			n.pending = false
			n.mu.Unlock()
		}
	}()
}
