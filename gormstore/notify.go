package gormstore

import (
	"context"
	"hash/fnv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/txoutbox/txoutbox/outbox"
)

var _ outbox.CommitNotifier = (*Store)(nil)

// notifyTimeout bounds one NOTIFY round trip.
const notifyTimeout = 5 * time.Second

// notifyInterval is the least time between two NOTIFYs of one store.
const notifyInterval = time.Millisecond

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
// concurrency (docs/benchmarks.md). It does nothing on SQLite or with
// Config.NoNotify.
func (s *Store) NotifyCommitted() {
	if s.dialect != postgres || s.cfg.NoNotify {
		return
	}
	s.pg.notify.kick()
}

// sendNotify sends one NOTIFY in a transaction that does not wait for its
// WAL flush: losing it in a crash loses only a wake-up.
func (s *Store) sendNotify() {
	ctx, cancel := context.WithTimeout(context.Background(), notifyTimeout)
	defer cancel()
	sqlDB, err := s.db.DB()
	if err != nil {
		return
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return
	}
	defer conn.Close()
	ch, err := s.channelName(ctx)
	if err != nil {
		return
	}
	err = withPgx(conn, func(px *pgx.Conn) error {
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		b.Queue("SET LOCAL synchronous_commit = off")
		b.Queue("SELECT pg_notify($1, '')", ch)
		b.Queue("COMMIT")
		return px.SendBatch(ctx, b).Close()
	})
	if err != nil {
		// The connection may be mid-transaction: never reuse it.
		_ = withPgx(conn, func(*pgx.Conn) error { return errBadConn })
	}
}

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

// channelName is the notification channel of the store's table: its
// schema-qualified name, so stores of tables with the same name in other
// schemas of the database do not wake each other. An unqualified table
// name is qualified with the connection's current schema, read once.
func (s *Store) channelName(ctx context.Context) (string, error) {
	if s.table.Schema != "" {
		return s.table.String(), nil
	}
	s.pg.chanOnce.Lock()
	defer s.pg.chanOnce.Unlock()
	if s.pg.channel != "" {
		return s.pg.channel, nil
	}
	var schema string
	if err := s.db.WithContext(ctx).Raw("SELECT current_schema()").Scan(&schema).Error; err != nil {
		return "", err
	}
	s.pg.channel = schema + "." + s.table.Name
	return s.pg.channel, nil
}

// lockspace is the first key of the advisory locks the claims take on
// partition keys: a hash of the schema-qualified table name, so tables of
// the same name in other schemas do not share key locks.
func (s *Store) lockspace(ctx context.Context) (int32, error) {
	name, err := s.channelName(ctx)
	if err != nil {
		return 0, err
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	return int32(h.Sum32()), nil
}
