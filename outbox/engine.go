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

// engine is the part of a relay that does not depend on where its rows
// come from: given a batch of claimed rows it publishes them in key order
// (per topic, one Publish call per group), finds the rows that fail, tells
// a poison row from a publisher outage, and decides for each failed row
// between a retry after a backoff and parking. The caller finishes the
// batch with the outcome. The Forwarder is the wake and poll loop around
// it, on a RelayStore.
type engine struct {
	pub message.Publisher
	cfg *ForwarderConfig // MaxAttempts, MinBackoff, MaxBackoff, PublishCompressed, Compressors
	tel *telemetry
	// publisherDown is set by a batch in which rows of several keys failed
	// (or a publish failed with ErrPublisherUnavailable) and nothing was
	// published, and cleared by any successful publish.
	publisherDown atomic.Bool
}

// outcome is what publishing one batch came to.
type outcome struct {
	// delivered are the IDs of the rows published.
	delivered []int64
	// failures are the rows to charge an attempt: retried later, or
	// parked (undecodable rows, and rows out of attempts).
	failures []Failure
	// failed counts the rows whose publish failed.
	failed int
	// parked counts the failures that park their row.
	parked int
	// outage is set when nothing was published and the publisher is
	// considered down; publishErr is then the last publish error.
	outage     bool
	publishErr error
}

// publish publishes rows, in ID order per partition key, and returns the
// outcome. A key stops at its first failed or undecodable row: its later
// rows are neither published nor charged (they are given back).
func (e *engine) publish(rows []Row) outcome {
	plan := e.plan(rows)

	type failedRow struct {
		row Row
		err error
	}
	var (
		delivered = make([]int64, 0, len(rows))
		failed    []failedRow
		blocked   = map[string]bool{}
	)
	for _, g := range plan.groups {
		msgs := make([]*message.Message, 0, len(g.items))
		items := make([]planItem, 0, len(g.items))
		for _, it := range g.items {
			if it.row.PartitionKey != "" && blocked[it.row.PartitionKey] {
				continue // released: waits behind its key's failed row
			}
			items = append(items, it)
			msgs = append(msgs, it.msg)
		}
		if len(msgs) == 0 {
			continue
		}
		endSpans := e.tel.startPublish(g.topic, msgs)
		err := e.pub.Publish(g.topic, msgs...)
		endSpans(err)
		if err == nil {
			for _, it := range items {
				delivered = append(delivered, it.row.ID)
			}
			continue
		}
		// Find the failing messages: publish one by one, in order. A key
		// stops at its first failure.
		for _, it := range items {
			key := it.row.PartitionKey
			if key != "" && blocked[key] {
				continue
			}
			err := e.pub.Publish(g.topic, it.msg)
			if err == nil {
				delivered = append(delivered, it.row.ID)
				continue
			}
			if key != "" {
				blocked[key] = true
			}
			failed = append(failed, failedRow{row: *it.row, err: err})
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
	for _, p := range plan.parked {
		failures = append(failures, Failure{ID: p.row.ID, Error: p.reason, Park: true})
	}
	for _, fl := range failed {
		failures = append(failures, e.failure(fl.row, fl.err, down))
	}
	out := outcome{delivered: delivered, failures: failures, failed: len(failed)}
	for _, fl := range failures {
		if fl.Park {
			out.parked++
		}
	}
	if down && len(delivered) == 0 && len(failed) > 0 {
		out.outage = true
		out.publishErr = failed[len(failed)-1].err
	}
	return out
}

// failure charges row a failed attempt: it is retried after a backoff, or
// parked when it has used MaxAttempts and the publisher is not down.
func (e *engine) failure(row Row, err error, publisherDown bool) Failure {
	attempts := row.Attempts + 1
	fl := Failure{ID: row.ID, Error: err.Error()}
	if attempts >= e.cfg.MaxAttempts && !publisherDown {
		fl.Park = true
		fl.Error = fmt.Sprintf("parked after %d attempts: %v", attempts, err)
		return fl
	}
	fl.RetryAfter = jitter(backoff(e.cfg, attempts))
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

// batchPlan is a claimed batch turned into publish groups.
type batchPlan struct {
	groups []*publishGroup
	parked []parkedRow
}

type publishGroup struct {
	round int
	topic string
	items []planItem
}

type planItem struct {
	row *Row // in the claim's rows
	msg *message.Message
}

type parkedRow struct {
	row    Row
	reason string
}

// plan decodes rows into messages and groups them for publishing.
// Rows of one key keep their order: a key's rows go into one group per run
// of the same topic, and the runs are published in rounds, so a key whose
// topic changes has its later rows published after its earlier ones. A key
// stops at its first undecodable row.
func (e *engine) plan(rows []Row) batchPlan {
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
		msg, err := e.decodeRow(r, in)
		if err != nil {
			plan.parked = append(plan.parked, parkedRow{row: *r, reason: err.Error()})
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
				g.items = make([]planItem, 0, len(rows)-i) // most batches are one group
			}
			index[gk] = g
			plan.groups = append(plan.groups, g)
		}
		g.items = append(g.items, planItem{row: r, msg: msg})
	}
	// Rounds in order; within a round, topics in order of first appearance.
	slices.SortStableFunc(plan.groups, func(a, b *publishGroup) int { return cmp.Compare(a.round, b.round) })
	return plan
}

// decodeRow turns a stored row back into a message, decompressed unless
// PublishCompressed is set. A row that cannot become a message is parked
// at once with the reason.
func (e *engine) decodeRow(r *Row, in intern.Table) (*message.Message, error) {
	msg, err := r.message(in)
	if err != nil {
		return nil, err
	}
	if !e.cfg.PublishCompressed {
		if err := Decompress(msg, e.cfg.Compressors...); err != nil {
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
