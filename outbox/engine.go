package outbox

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/internal/intern"
)

// Engine is the part of a relay that does not depend on where its rows
// come from: the [Forwarder] runs one on the rows it claims from a
// [RelayStore], and a relay that reads its rows from another source (such
// as a database's change stream) can run one on the rows it holds in
// memory. Publish publishes a batch in key order (per topic, one Publish
// call per group), finds the rows that fail, tells a poison row from a
// publisher outage, and decides for each failed row between a retry after
// a backoff and parking. The caller finishes the batch with the [Outcome].
//
// The contract of a batch: rows have distinct IDs, the rows of one
// partition key are given in ID order, and rows may come from several
// topics. A key stops at its first row that fails to publish: its later
// rows are neither delivered nor charged, and the caller gives them back,
// to come again after the failed row. A row that cannot become a message
// (see [Row.Message]; unless PublishCompressed, also a payload that does
// not decompress) is parked at once, whatever its key's earlier rows come
// to, and stops its key the same way. The caller then records the
// outcome: Delivered as delivered, each of Failures as it says (retry
// after RetryAfter, or park), and every other row of the batch as not
// attempted.
//
// An Engine remembers from batch to batch whether the publisher is down
// (see Outcome.Outage), so a relay publishes all its batches through one.
type Engine struct {
	pub message.Publisher
	cfg ForwarderConfig // with defaults; MaxAttempts, MinBackoff, MaxBackoff, PublishCompressed, Compressors
	tel *telemetry
	// publisherDown is set by a batch in which rows of several keys failed
	// (or a publish failed with ErrPublisherUnavailable) and nothing was
	// published, and cleared by any successful publish.
	publisherDown atomic.Bool
}

// NewEngine returns an engine publishing to pub. Of cfg it uses
// MaxAttempts, MinBackoff, MaxBackoff, PublishCompressed, Compressors,
// TracerProvider and Propagator, with the defaults and the validation of
// [NewForwarder].
func NewEngine(pub message.Publisher, cfg ForwarderConfig) (*Engine, error) {
	if err := errors.Join(checkEngine(pub, cfg)...); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	e, err := newEngine(pub, cfg)
	if err != nil {
		return nil, fmt.Errorf("outbox: engine telemetry: %w", err)
	}
	return e, nil
}

// checkEngine reports the problems with an engine's publisher and config.
func checkEngine(pub message.Publisher, cfg ForwarderConfig) []error {
	var errs []error
	if pub == nil {
		errs = append(errs, fmt.Errorf("%w: missing publisher (any Watermill message.Publisher)", ErrInvalidConfig))
	}
	return append(errs, cfg.Validate())
}

// newEngine returns an engine on a valid cfg with its defaults set.
func newEngine(pub message.Publisher, cfg ForwarderConfig) (*Engine, error) {
	tel, err := newTelemetry(cfg)
	if err != nil {
		return nil, err
	}
	return &Engine{pub: pub, cfg: cfg, tel: tel}, nil
}

// Outcome is what publishing one batch came to. The caller records
// Delivered and Failures (as [Claim.Finish] does, in one step) and gives
// the batch's other rows back untouched.
type Outcome struct {
	// Delivered are the IDs of the rows published: the caller marks them
	// delivered.
	Delivered []int64
	// Failures are the rows to charge an attempt: the caller makes each
	// due again after its RetryAfter, or parks it (undecodable rows, and
	// rows out of attempts).
	Failures []Failure
	// Failed counts the rows whose publish failed, for metrics.
	Failed int
	// Parked counts the Failures that park their row, for metrics.
	Parked int
	// Outage is set when nothing was published and the publisher is
	// considered down (rows of two or more keys failed, or a publish
	// failed with ErrPublisherUnavailable). No row is parked then; the
	// caller records the failures as usual and backs off as a whole
	// before its next batch, rather than going on at once.
	Outage bool
	// PublishErr is the last publish error of an Outage batch, to report.
	PublishErr error
}

// Publish publishes rows, in ID order per partition key, and returns the
// outcome; see [Engine] for the contract.
func (e *Engine) Publish(rows []Row) Outcome {
	plan := planBatch(rows, !e.cfg.PublishCompressed, e.cfg.Compressors)

	type failedRow struct {
		row *Row
		err error
	}
	var (
		delivered = make([]int64, 0, len(rows))
		failed    []failedRow
		blocked   = map[string]bool{}
	)
	for _, g := range plan.groups {
		msgs := make([]*message.Message, 0, len(g.items))
		items := make([]Decoded, 0, len(g.items))
		for _, it := range g.items {
			if it.Row.PartitionKey != "" && blocked[it.Row.PartitionKey] {
				continue // released: waits behind its key's failed row
			}
			items = append(items, it)
			msgs = append(msgs, it.Message)
		}
		if len(msgs) == 0 {
			continue
		}
		endSpans := e.tel.startPublish(g.topic, msgs)
		err := e.pub.Publish(g.topic, msgs...)
		endSpans(err)
		if err == nil {
			for _, it := range items {
				delivered = append(delivered, it.Row.ID)
			}
			continue
		}
		// Find the failing messages: publish one by one, in order. A key
		// stops at its first failure.
		for _, it := range items {
			key := it.Row.PartitionKey
			if key != "" && blocked[key] {
				continue
			}
			err := e.pub.Publish(g.topic, it.Message)
			if err == nil {
				delivered = append(delivered, it.Row.ID)
				continue
			}
			if key != "" {
				blocked[key] = true
			}
			failed = append(failed, failedRow{row: it.Row, err: err})
		}
	}

	// Is the publisher down, or are these messages poison? A batch that
	// published something proves the publisher works; a batch in which
	// rows of two or more keys failed, or a publish failed with
	// ErrPublisherUnavailable, and nothing was published is taken for an
	// outage. Rows are parked only while the publisher is not
	// considered down, so an outage never parks rows and the relay resumes
	// by itself when the broker returns.
	if len(delivered) > 0 {
		e.publisherDown.Store(false)
	} else if len(failed) >= 2 || slices.ContainsFunc(failed, func(fl failedRow) bool {
		return errors.Is(fl.err, ErrPublisherUnavailable)
	}) {
		e.publisherDown.Store(true)
	}
	down := e.publisherDown.Load()
	failures := make([]Failure, 0, len(plan.parked)+len(failed))
	failures = append(failures, plan.parked...)
	for _, fl := range failed {
		failures = append(failures, e.failure(fl.row, fl.err, down))
	}
	out := Outcome{Delivered: delivered, Failures: failures, Failed: len(failed)}
	for _, fl := range failures {
		if fl.Park {
			out.Parked++
		}
	}
	if down && len(delivered) == 0 && len(failed) > 0 {
		out.Outage = true
		out.PublishErr = failed[len(failed)-1].err
	}
	return out
}

// failure charges row a failed attempt: it is retried after a backoff, or
// parked when it has used MaxAttempts and the publisher is not down.
func (e *Engine) failure(row *Row, err error, publisherDown bool) Failure {
	attempts := row.Attempts + 1
	fl := Failure{ID: row.ID, Error: err.Error()}
	if attempts >= e.cfg.MaxAttempts && !publisherDown {
		fl.Park = true
		fl.Error = fmt.Sprintf("parked after %d attempts: %v", attempts, err)
		return fl
	}
	fl.RetryAfter = jitter(backoff(&e.cfg, attempts))
	return fl
}

// backoff returns cfg.MinBackoff doubled n-1 times, capped at
// cfg.MaxBackoff.
func backoff(cfg *ForwarderConfig, n int) time.Duration {
	d := cfg.MinBackoff
	for i := 1; i < n && d < cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, cfg.MaxBackoff)
}

func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d*8/10 + rand.N(d*4/10+1)
}

// batchPlan is a batch turned into publish groups.
type batchPlan struct {
	groups []*publishGroup
	parked []Failure // the undecodable rows
}

type publishGroup struct {
	round int
	topic string
	items []Decoded
}

// Decoded is a row turned back into its message, to deliver.
type Decoded struct {
	// Row is the row, in the slice it was decoded from.
	Row *Row
	// Message is the row's message.
	Message *message.Message
}

// DecodeRows turns rows, given in ID order per partition key, into the
// messages to deliver one at a time, with the rules of an [Engine]: a row
// that cannot become a message is returned in parked, to park at once
// (Failure.Park), and its key's later rows are left out, to give back.
// Each message is decoded as [Row.Message] does: a compressed payload
// stays compressed. The messages keep each key's rows in ID order, and
// the rows of a single topic in the order given.
func DecodeRows(rows []Row) (deliver []Decoded, parked []Failure) {
	p := planBatch(rows, false, nil)
	switch len(p.groups) {
	case 0:
		return nil, p.parked
	case 1:
		return p.groups[0].items, p.parked
	}
	n := 0
	for _, g := range p.groups {
		n += len(g.items)
	}
	deliver = make([]Decoded, 0, n)
	for _, g := range p.groups {
		deliver = append(deliver, g.items...)
	}
	return deliver, p.parked
}

// planBatch decodes rows into messages (see decodeRow) and groups them for
// publishing. Rows of one key keep their order: a key's rows go into one
// group per run of the same topic, and the runs are published in rounds,
// so a key whose topic changes has its later rows published after its
// earlier ones. A key stops at its first undecodable row.
func planBatch(rows []Row, decompress bool, compressors []Compressor) batchPlan {
	type keyState struct {
		topic   string
		round   int
		stopped bool
	}
	var plan batchPlan
	keys := map[string]*keyState{}
	type groupKey struct {
		round int
		topic string
	}
	index := map[groupKey]*publishGroup{}
	in := intern.Table{} // metadata keys and values that repeat from row to row
	for i := range rows {
		r := &rows[i]
		round := 0
		var ks *keyState
		if r.PartitionKey != "" {
			ks = keys[r.PartitionKey]
			if ks == nil {
				ks = &keyState{topic: r.Topic}
				keys[r.PartitionKey] = ks
			}
			if ks.stopped {
				continue
			}
			if r.Topic != ks.topic {
				ks.round++
				ks.topic = r.Topic
			}
			round = ks.round
		}
		msg, err := decodeRow(r, in, decompress, compressors)
		if err != nil {
			plan.parked = append(plan.parked, Failure{ID: r.ID, Error: err.Error(), Park: true})
			if ks != nil {
				ks.stopped = true
			}
			continue
		}
		gk := groupKey{round, r.Topic}
		g := index[gk]
		if g == nil {
			g = &publishGroup{round: round, topic: r.Topic}
			if len(plan.groups) == 0 {
				g.items = make([]Decoded, 0, len(rows)-i) // most batches are one group
			}
			index[gk] = g
			plan.groups = append(plan.groups, g)
		}
		g.items = append(g.items, Decoded{Row: r, Message: msg})
	}
	// Rounds in order; within a round, topics in order of first appearance.
	slices.SortStableFunc(plan.groups, func(a, b *publishGroup) int { return cmp.Compare(a.round, b.round) })
	return plan
}

// decodeRow turns a stored row back into a message, decompressed when
// decompress is set (with the built-in and the given compressors). A row
// that cannot become a message is parked at once with the reason.
func decodeRow(r *Row, in intern.Table, decompress bool, compressors []Compressor) (*message.Message, error) {
	msg, err := r.message(in)
	if err != nil {
		return nil, err
	}
	if decompress {
		if err := Decompress(msg, compressors...); err != nil {
			return nil, fmt.Errorf("undecodable row: %w", err)
		}
	}
	return msg, nil
}

// Message turns a stored row back into the message that was saved: its
// UUID, payload and metadata; a compressed payload stays compressed
// (MetadataContentEncoding; see Decompress). It fails for a row that
// cannot be a message (no UUID, no topic, metadata that is not a JSON
// object of strings): relays park such a row at once, with the error as
// its reason, and hold its key's later rows behind it.
func (r *Row) Message() (*message.Message, error) { return r.message(nil) }

// message is Message sharing repeated metadata strings through in.
func (r *Row) message(in intern.Table) (*message.Message, error) {
	if r.UUID == "" {
		return nil, errors.New("undecodable row: empty message UUID")
	}
	if r.Topic == "" {
		return nil, errors.New("undecodable row: empty topic")
	}
	msg := message.NewMessage(r.UUID, r.Payload)
	if len(r.Metadata) > 0 {
		if err := decodeMetadata(r.Metadata, msg.Metadata, in); err != nil {
			return nil, fmt.Errorf("undecodable row: metadata is not a JSON object of strings: %w", err)
		}
	}
	return msg, nil
}
