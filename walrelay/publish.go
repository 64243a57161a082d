package walrelay

import (
	"sync"
	"sync/atomic"

	"github.com/jackc/pglogrepl"
	"github.com/txoutbox/txoutbox/outbox"
)

// txn is a committed transaction's events, as rows numbered in stream
// order, and the end of the transaction in the WAL: the position to
// confirm once they are all published.
type txn struct {
	rows []outbox.Row
	end  pglogrepl.LSN
}

// pipeline passes committed transactions from the reader to the
// publisher, in commit order, and the publisher's progress back.
type pipeline struct {
	batch int // the most rows per publish
	limit int // the most rows queued before the reader waits

	mu     sync.Mutex
	queue  []txn
	head   int // rows of queue[0] already taken
	queued int // rows in queue

	ready chan struct{} // signalled when the queue gets a transaction, or on finish
	// finishing makes the publisher return once the queue is empty.
	finishing atomic.Bool
	space     chan struct{} // signalled when the publisher takes rows
	// confirmed is the end of the last transaction whose rows were all
	// published.
	confirmed atomic.Uint64
}

func newPipeline(batch int) *pipeline {
	return &pipeline{
		batch: batch,
		limit: 4 * batch,
		ready: make(chan struct{}, 1),
		space: make(chan struct{}, 1),
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// finish makes the publisher publish what is queued and return.
func (p *pipeline) finish() {
	p.finishing.Store(true)
	signal(p.ready)
}

func (p *pipeline) confirmedLSN() pglogrepl.LSN { return pglogrepl.LSN(p.confirmed.Load()) }

// add queues t, unless the queue is full: then the reader waits for
// space. A transaction is taken into an empty queue whatever its size.
func (p *pipeline) add(t txn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.queued > 0 && p.queued+len(t.rows) > p.limit {
		return false
	}
	p.queue = append(p.queue, t)
	p.queued += len(t.rows)
	signal(p.ready)
	return true
}

// txnMark is a transaction being published: the IDs of its rows (a
// contiguous range), the position to confirm once they are all done, and
// how many are not done yet.
type txnMark struct {
	first, last int64
	end         pglogrepl.LSN
	left        int
}

// take returns the next batch: up to n rows of the queued transactions
// in order (a larger transaction is split over batches), and a mark for
// each transaction whose first row it returns.
func (p *pipeline) take(n int) (rows []outbox.Row, marks []txnMark) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.queue) > 0 && len(rows) < n {
		t := &p.queue[0]
		if p.head == 0 {
			marks = append(marks, txnMark{first: t.rows[0].ID, last: t.rows[len(t.rows)-1].ID, end: t.end, left: len(t.rows)})
		}
		k := min(len(t.rows)-p.head, n-len(rows))
		if rows == nil && k == len(t.rows)-p.head && (len(p.queue) == 1 || k == n) {
			rows = t.rows[p.head : p.head+k] // the whole batch is this slice
		} else {
			rows = append(rows, t.rows[p.head:p.head+k]...)
		}
		p.head += k
		p.queued -= k
		if p.head < len(t.rows) {
			break
		}
		p.queue[0] = txn{}
		p.queue = p.queue[1:]
		p.head = 0
	}
	if len(p.queue) == 0 {
		p.queue = nil
	}
	signal(p.space)
	return rows, marks
}

// empty reports whether nothing is queued.
func (p *pipeline) empty() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue) == 0
}
