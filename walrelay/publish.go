package walrelay

import (
	"sync"
	"sync/atomic"
	"time"

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

// take returns the next batch: up to p.batch rows of the queued
// transactions in order (a larger transaction is split over batches),
// and the end of the last transaction the batch completes, 0 if it
// completes none.
func (p *pipeline) take() (rows []outbox.Row, end pglogrepl.LSN) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.queue) > 0 && len(rows) < p.batch {
		t := &p.queue[0]
		n := min(len(t.rows)-p.head, p.batch-len(rows))
		if rows == nil && n == len(t.rows)-p.head && (len(p.queue) == 1 || n == p.batch) {
			rows = t.rows[p.head : p.head+n] // the whole batch is this slice
		} else {
			rows = append(rows, t.rows[p.head:p.head+n]...)
		}
		p.head += n
		p.queued -= n
		if p.head < len(t.rows) {
			break
		}
		end = t.end
		p.queue[0] = txn{}
		p.queue = p.queue[1:]
		p.head = 0
	}
	if len(p.queue) == 0 {
		p.queue = nil
	}
	signal(p.space)
	return rows, end
}

// publish publishes the queued transactions in order until stop is
// closed, or, after finish, until the queue is empty. It finishes the
// publish call in progress and then returns; what is not confirmed by
// then streams again after a restart.
func (p *pipeline) publish(r *Relay, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-p.ready:
		}
		for {
			select {
			case <-stop:
				return
			default:
			}
			rows, end := p.take()
			if len(rows) == 0 {
				if p.finishing.Load() {
					return
				}
				break
			}
			if !r.publishAll(rows, stop) {
				return
			}
			if end != 0 {
				p.confirmed.Store(uint64(end))
			}
		}
	}
}

// publishAll publishes rows through the engine until every one was
// delivered, waiting between attempts as the engine's outcome says. It
// returns false when stop is closed first.
func (r *Relay) publishAll(rows []outbox.Row, stop <-chan struct{}) bool {
	outages := 0
	for {
		out := r.eng.Publish(rows)
		if len(out.Delivered) == len(rows) {
			return true
		}
		rows = r.retryRows(rows, out)
		wait := r.cfg.Forwarder.MaxBackoff
		for _, f := range out.Failures {
			if !f.Park {
				wait = min(wait, f.RetryAfter)
			}
		}
		if out.Outage {
			outages++
			wait = max(wait, min(backoffFor(r.cfg.Forwarder.MinBackoff, r.cfg.Forwarder.MaxBackoff, outages), maxOutageBackoff))
			if outages == 1 || outages%10 == 0 {
				r.log.Warn("walrelay: publisher failing, backing off", "error", out.PublishErr, "consecutive", outages, "next_try_in", wait)
			}
		} else {
			outages = 0
		}
		timer := time.NewTimer(wait)
		select {
		case <-stop:
			timer.Stop()
			return false
		case <-timer.C:
		}
	}
}

// retryRows returns the rows of a batch not delivered, in their order,
// with an attempt charged to each that failed. A row the engine would
// park is retried too, and logged: the WAL relay does not park yet.
func (r *Relay) retryRows(rows []outbox.Row, out outbox.Outcome) []outbox.Row {
	delivered := make(map[int64]bool, len(out.Delivered))
	for _, id := range out.Delivered {
		delivered[id] = true
	}
	failed := make(map[int64]outbox.Failure, len(out.Failures))
	for _, f := range out.Failures {
		failed[f.ID] = f
	}
	left := make([]outbox.Row, 0, len(rows)-len(out.Delivered))
	for _, row := range rows {
		if delivered[row.ID] {
			continue
		}
		if f, ok := failed[row.ID]; ok {
			row.Attempts++
			if f.Park {
				r.log.Error("walrelay: event cannot be published; retrying it (its key's later events wait behind it)", "uuid", row.UUID, "topic", row.Topic, "partition_key", row.PartitionKey, "attempts", row.Attempts, "error", f.Error)
			}
		}
		left = append(left, row)
	}
	return left
}
