package walrelay

import (
	"cmp"
	"context"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/txoutbox/txoutbox/internal/ctxtime"
	"github.com/txoutbox/txoutbox/outbox"
)

// Table is the outbox table into which a relay hands the events it does
// not publish from the stream: an event that keeps failing, parked there
// with its error, and the later events of its partition key, written
// behind it. *gormstore.Store on PostgreSQL implements it; the table's
// forwarder (outbox.NewForwarder on the same store) delivers the key's
// events from the table once the parked row is requeued or discarded.
type Table interface {
	// InsertRelayRows writes rows to the table in the order given: parked
	// those with a Park entry in failures (with its error and the row's
	// Attempts), pending the others. A row whose message UUID an
	// undelivered row already has is skipped. It returns how many rows it
	// wrote.
	InsertRelayRows(ctx context.Context, rows []outbox.Row, failures []outbox.Failure) (int64, error)
	// UndeliveredKeys returns those of keys that have an undelivered row
	// in the table, parked or pending; with keys nil, every partition key
	// that has one.
	UndeliveredKeys(ctx context.Context, keys []string) ([]string, error)
}

// heldKey is a partition key whose event failed and waits for its retry
// in memory, with the key's later events behind it.
type heldKey struct {
	rows []outbox.Row // in ID order; rows[0] failed
	due  time.Time
}

// publisher publishes one stream's transactions, in the order of each
// partition key, and tracks which transactions are done: every row
// published or handed over to the table. The slot is confirmed up to the
// end of the last transaction of a done prefix of the stream.
type publisher struct {
	r    *Relay
	pipe *pipeline
	ctx  context.Context // ends when the stream's publisher must stop
	// marks are the transactions taken and not yet confirmed, in stream
	// order.
	marks []txnMark
	// hint is the index in marks of the last row done: rows are mostly
	// done in stream order.
	hint int
	// held are the keys (and unordered rows, by holdKey) retrying in
	// memory; heldRows counts their rows.
	held     map[string]*heldKey
	heldRows int
	// diverted are the keys with undelivered rows in the table, and when
	// that was last seen: their events go to the table too, behind.
	diverted map[string]time.Time
	// outages counts consecutive batches that found the publisher down.
	outages int
	// failing are the keys (by holdKey) whose rows failed since a batch
	// last published something: rows of two or more keys failing with
	// nothing published is an outage, across batches as within one.
	failing map[string]bool
}

// holdKey is the key under which a failed row and its key's later rows
// wait: its partition key, or its own for an unordered row.
func holdKey(row *outbox.Row) string {
	if row.PartitionKey != "" {
		return row.PartitionKey
	}
	return "\x00" + strconv.FormatInt(row.ID, 10)
}

// run publishes until ctx ends or, after finish, until nothing is left.
func (pb *publisher) run() {
	for pb.ctx.Err() == nil {
		batch := pb.next()
		if len(batch) == 0 {
			if pb.pipe.finishing.Load() && pb.heldRows == 0 && pb.pipe.empty() {
				return
			}
			pb.wait()
			continue
		}
		pb.publish(batch)
		pb.r.heldRows.Store(int64(pb.heldRows))
		pb.r.divertedKeys.Store(int64(len(pb.diverted)))
	}
}

// next returns the next batch: the held keys due for their retry (all of
// them while the publisher is down), then the stream's next rows, those
// of held keys left waiting behind them.
func (pb *publisher) next() []outbox.Row {
	limit := pb.r.cfg.Forwarder.BatchSize
	now := time.Now()
	var batch []outbox.Row
	for k, h := range pb.held {
		if len(batch) >= limit {
			break
		}
		if pb.outages > 0 || !now.Before(h.due) {
			batch = append(batch, h.rows...)
			pb.heldRows -= len(h.rows)
			delete(pb.held, k)
		}
	}
	if len(batch) >= limit || pb.heldRows >= pb.pipe.limit {
		// Full; or too much held in memory: the stream waits until held
		// keys are published or parked.
		return batch
	}
	fresh, marks := pb.pipe.take(limit - len(batch))
	pb.marks = append(pb.marks, marks...)
	if len(batch) == 0 && len(pb.held) == 0 {
		return fresh
	}
	for _, row := range fresh {
		if row.PartitionKey != "" {
			if h := pb.held[row.PartitionKey]; h != nil {
				h.rows = append(h.rows, row)
				pb.heldRows++
				continue
			}
		}
		batch = append(batch, row)
	}
	return batch
}

// wait waits for the stream's next rows, the next held key's retry, or
// the end of ctx.
func (pb *publisher) wait() {
	var due <-chan time.Time
	if len(pb.held) > 0 {
		var next time.Time
		for _, h := range pb.held {
			if next.IsZero() || h.due.Before(next) {
				next = h.due
			}
		}
		t := time.NewTimer(max(time.Until(next), 0))
		defer t.Stop()
		due = t.C
	}
	select {
	case <-pb.ctx.Done():
	case <-pb.pipe.ready:
	case <-due:
	}
}

// publish publishes batch: the rows of keys diverted to the table go to
// the table; the others through the engine. Of those that fail, a row to
// park goes to the table parked with its key's later rows behind it, and
// a row to retry waits in memory with its key's later rows; other keys go
// on. When the publisher is down nothing is parked, and the next batch
// waits for the outage backoff.
func (pb *publisher) publish(batch []outbox.Row) {
	r := pb.r
	var toTable []outbox.Row
	if r.cfg.Table != nil && len(pb.diverted) > 0 {
		if !pb.refresh(batch) {
			return
		}
		if slices.ContainsFunc(batch, pb.isDiverted) {
			pub := make([]outbox.Row, 0, len(batch))
			for _, row := range batch {
				if pb.isDiverted(row) {
					toTable = append(toTable, row)
				} else {
					pub = append(pub, row)
				}
			}
			batch = pub
		}
	}
	var (
		parked []outbox.Failure
		outage bool
		out    outbox.Outcome
	)
	if len(batch) > 0 {
		out = r.eng.Publish(batch)
		for _, id := range out.Delivered {
			pb.done(id)
		}
		outage = pb.down(batch, out)
		if len(out.Delivered) < len(batch) {
			var more []outbox.Row
			more, parked = pb.failed(batch, out, outage)
			toTable = append(toTable, more...)
		}
		switch {
		case outage:
			pb.outages++
		case len(out.Delivered) > 0:
			pb.outages = 0
		}
	}
	if len(toTable) > 0 && !pb.writeTable(toTable, parked) {
		return
	}
	pb.advance()
	if outage {
		wait := min(backoffFor(r.cfg.Forwarder.MinBackoff, r.cfg.Forwarder.MaxBackoff, pb.outages), maxOutageBackoff)
		if pb.outages == 1 || pb.outages%10 == 0 {
			r.log.Warn("walrelay: publisher failing, backing off (nothing is parked while it is down)", "error", out.PublishErr, "consecutive", pb.outages, "next_try_in", wait)
		}
		ctxtime.Sleep(pb.ctx, wait)
	}
}

// down reports whether the publisher is taken for down after batch's
// outcome: the engine says so, or nothing was published since rows of
// two or more keys failed, in this batch or the ones before. The table
// relay's claims hold many keys' rows at once; the stream's batches are
// often a transaction or two, and a retry is a batch of its own, so the
// rule is kept across batches.
func (pb *publisher) down(batch []outbox.Row, out outbox.Outcome) bool {
	if len(out.Delivered) > 0 {
		clear(pb.failing)
	}
	if len(out.Failures) == 0 {
		return out.Outage
	}
	ids := make(map[int64]outbox.Failure, len(out.Failures))
	for _, f := range out.Failures {
		ids[f.ID] = f
	}
	for i := range batch {
		if f, ok := ids[batch[i].ID]; ok && !pb.undecodable(&batch[i], f) {
			pb.failing[holdKey(&batch[i])] = true
		}
	}
	return out.Outage || len(out.Delivered) == 0 && len(pb.failing) >= 2
}

// undecodable reports whether f parks row because it cannot become a
// message, by the engine's rule (see outbox.Engine): such a row was not
// published, says nothing about the publisher, and is parked even while
// the publisher is down.
func (pb *publisher) undecodable(row *outbox.Row, f outbox.Failure) bool {
	if !f.Park {
		return false
	}
	msg, err := row.Message()
	if err != nil {
		return true
	}
	fc := &pb.r.cfg.Forwarder
	return !fc.PublishCompressed && outbox.Decompress(msg, fc.Compressors...) != nil
}

// isDiverted reports whether row's key has rows waiting in the table.
func (pb *publisher) isDiverted(row outbox.Row) bool {
	if row.PartitionKey == "" {
		return false
	}
	_, ok := pb.diverted[row.PartitionKey]
	return ok
}

// failed sorts the rows of batch that the engine did not deliver: it
// returns those to write to the table (a row to park, and its key's later
// rows, behind it) with the failures of the rows to park, and holds the
// others in memory for their retry, each key's later rows behind its
// failed row. Each failed row is charged an attempt. While the publisher
// is down nothing is parked: a row to park is held and tried again after
// the outage backoff.
func (pb *publisher) failed(batch []outbox.Row, out outbox.Outcome, down bool) (toTable []outbox.Row, parked []outbox.Failure) {
	r := pb.r
	delivered := make(map[int64]bool, len(out.Delivered))
	for _, id := range out.Delivered {
		delivered[id] = true
	}
	failures := make(map[int64]outbox.Failure, len(out.Failures))
	for _, f := range out.Failures {
		failures[f.ID] = f
	}
	parkedKeys := map[string]bool{}
	now := time.Now()
	for _, row := range batch {
		if delivered[row.ID] {
			continue
		}
		key := row.PartitionKey
		if key != "" && parkedKeys[key] {
			toTable = append(toTable, row)
			continue
		}
		if h := pb.held[holdKey(&row)]; h != nil {
			h.rows = append(h.rows, row)
			pb.heldRows++
			continue
		}
		f, ok := failures[row.ID]
		if !ok {
			// Behind a failed row of its key that this batch did not
			// hold: by the engine's contract it cannot be; try it again.
			pb.hold(row, now)
			continue
		}
		row.Attempts++
		if f.Park && down && !pb.undecodable(&row, f) {
			pb.hold(row, now)
			continue
		}
		if f.Park && r.cfg.Table != nil {
			toTable = append(toTable, row)
			parked = append(parked, f)
			if key != "" {
				parkedKeys[key] = true
			}
			r.log.Warn("walrelay: event parked in the outbox table; its key's later events follow it there until it is requeued or discarded", "uuid", row.UUID, "topic", row.Topic, "partition_key", key, "attempts", row.Attempts, "error", f.Error)
			continue
		}
		wait := f.RetryAfter
		if f.Park {
			wait = r.cfg.Forwarder.MaxBackoff
			r.log.Error("walrelay: event cannot be published; retrying it (no Config.Table to park it in; its key's later events wait behind it)", "uuid", row.UUID, "topic", row.Topic, "partition_key", key, "attempts", row.Attempts, "error", f.Error)
		}
		pb.hold(row, now.Add(wait))
	}
	return toTable, parked
}

// hold makes row, a failed row, wait in memory until due.
func (pb *publisher) hold(row outbox.Row, due time.Time) {
	pb.held[holdKey(&row)] = &heldKey{rows: []outbox.Row{row}, due: due}
	pb.heldRows++
}

// writeTable writes rows to the table, in ID order, those of parked
// parked, trying again after a backoff until it succeeds or ctx ends; it
// reports whether it wrote them. Their keys are diverted from then on.
func (pb *publisher) writeTable(rows []outbox.Row, parked []outbox.Failure) bool {
	r := pb.r
	slices.SortFunc(rows, func(a, b outbox.Row) int { return cmp.Compare(a.ID, b.ID) })
	for n := 1; ; n++ {
		wrote, err := r.cfg.Table.InsertRelayRows(pb.ctx, rows, parked)
		if err == nil {
			if skipped := int64(len(rows)) - wrote; skipped > 0 {
				// Streamed again after a restart, or an event whose UUID
				// another undelivered row has.
				r.log.Info("walrelay: events already in the outbox table (by message UUID) were not written again", "skipped", skipped, "rows", len(rows))
			}
			break
		}
		if pb.ctx.Err() != nil {
			return false
		}
		wait := min(backoffFor(r.cfg.Forwarder.MinBackoff, r.cfg.Forwarder.MaxBackoff, n), maxOutageBackoff)
		if n == 1 || n%10 == 0 {
			r.log.Warn("walrelay: cannot write events to the outbox table; the stream waits", "error", err, "rows", len(rows), "consecutive", n, "next_try_in", wait)
		}
		ctxtime.Sleep(pb.ctx, wait)
	}
	now := time.Now()
	for _, row := range rows {
		if row.PartitionKey != "" {
			pb.diverted[row.PartitionKey] = now
		}
		pb.done(row.ID)
	}
	r.parked.Add(int64(len(parked)))
	return true
}

// refresh asks the table which of batch's diverted keys still have
// undelivered rows there, for keys not asked about within PollInterval,
// and stops diverting the others: their rows in the table were all
// delivered, so the stream's are published again. It tries again after a
// backoff until it has an answer or ctx ends; it reports whether it got
// one.
func (pb *publisher) refresh(batch []outbox.Row) bool {
	r := pb.r
	now := time.Now()
	var stale []string
	for _, row := range batch {
		k := row.PartitionKey
		if at, ok := pb.diverted[k]; ok && k != "" && now.Sub(at) >= r.cfg.Forwarder.PollInterval && !slices.Contains(stale, k) {
			stale = append(stale, k)
		}
	}
	if len(stale) == 0 {
		return true
	}
	var keys []string
	for n := 1; ; n++ {
		var err error
		keys, err = r.cfg.Table.UndeliveredKeys(pb.ctx, stale)
		if err == nil {
			break
		}
		if pb.ctx.Err() != nil {
			return false
		}
		wait := min(backoffFor(r.cfg.Forwarder.MinBackoff, r.cfg.Forwarder.MaxBackoff, n), maxOutageBackoff)
		if n == 1 || n%10 == 0 {
			r.log.Warn("walrelay: cannot read which keys wait in the outbox table; the stream waits", "error", err, "consecutive", n, "next_try_in", wait)
		}
		ctxtime.Sleep(pb.ctx, wait)
	}
	now = time.Now()
	for _, k := range stale {
		if slices.Contains(keys, k) {
			pb.diverted[k] = now
		} else {
			delete(pb.diverted, k)
			r.log.Info("walrelay: a key's events in the outbox table were delivered; publishing its events from the stream again", "partition_key", k)
		}
	}
	return true
}

// done records that the row with id was published or written to the
// table.
func (pb *publisher) done(id int64) {
	i := pb.hint
	for i < len(pb.marks) && pb.marks[i].last < id && i < pb.hint+2 {
		i++
	}
	if i >= len(pb.marks) || pb.marks[i].first > id || pb.marks[i].last < id {
		i = sort.Search(len(pb.marks), func(i int) bool { return pb.marks[i].last >= id })
	}
	if i < len(pb.marks) && pb.marks[i].first <= id {
		pb.marks[i].left--
		pb.hint = i
	}
}

// advance confirms the end of the last transaction of the done prefix of
// the stream.
func (pb *publisher) advance() {
	n := 0
	for n < len(pb.marks) && pb.marks[n].left == 0 {
		n++
	}
	if n == 0 {
		return
	}
	pb.pipe.confirmed.Store(uint64(pb.marks[n-1].end))
	pb.marks = slices.Delete(pb.marks, 0, n)
	pb.hint = max(pb.hint-n, 0)
}
