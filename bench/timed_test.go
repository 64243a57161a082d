package bench_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/outbox"
)

// timedStore wraps the native store to time each batch's phases: the
// claim (Store.Claim), the publish (from the claim's return to Finish),
// and the finish (Claim.Finish: delete + commit). It costs two clock reads
// per phase.
type timedStore struct {
	*gormstore.Store
	mu      sync.Mutex
	batches []batchTiming
}

// batchTiming is one claim's phases.
type batchTiming struct {
	rows                   int
	claim, publish, finish time.Duration
}

var (
	_ outbox.RelayStore = (*timedStore)(nil)
	_ outbox.Listener   = (*timedStore)(nil)
)

// Claim times the store's claim.
func (t *timedStore) Claim(ctx context.Context, p outbox.ClaimParams) (outbox.Claim, error) {
	start := time.Now()
	c, err := t.Store.Claim(ctx, p)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	return &timedClaim{Claim: c, t: t, claimed: now, timing: batchTiming{rows: len(c.Rows()), claim: now.Sub(start)}}, nil
}

type timedClaim struct {
	outbox.Claim
	t       *timedStore
	claimed time.Time
	timing  batchTiming
}

// Finish times the store's finish.
func (c *timedClaim) Finish(ctx context.Context, delivered []int64, failures []outbox.Failure) error {
	start := time.Now()
	err := c.Claim.Finish(ctx, delivered, failures)
	c.timing.publish = start.Sub(c.claimed)
	c.timing.finish = time.Since(start)
	c.t.record(c.timing)
	return err
}

// Release records an empty or released claim.
func (c *timedClaim) Release(ctx context.Context) error {
	start := time.Now()
	err := c.Claim.Release(ctx)
	c.timing.finish = time.Since(start)
	c.t.record(c.timing)
	return err
}

func (t *timedStore) record(b batchTiming) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.batches = append(t.batches, b)
}

// summary describes where the drain's time went, per quarter of its
// batches: rows per batch and the mean claim, publish and finish time.
func (t *timedStore) summary() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	var all batchTiming
	n := len(t.batches)
	for _, x := range t.batches {
		all.rows += x.rows
		all.claim += x.claim
		all.publish += x.publish
		all.finish += x.finish
	}
	total := all.claim + all.publish + all.finish
	pct := func(d time.Duration) float64 { return 100 * float64(d) / float64(max(total, 1)) }
	fmt.Fprintf(&b, "%d batches, %d rows; claim %.0f%%, publish %.0f%%, finish %.0f%% of relay time; per quarter (rows/batch, ms claim/publish/finish per batch):",
		n, all.rows, pct(all.claim), pct(all.publish), pct(all.finish))
	for q := range 4 {
		part := t.batches[q*n/4 : (q+1)*n/4]
		if len(part) == 0 {
			continue
		}
		var s batchTiming
		for _, x := range part {
			s.rows += x.rows
			s.claim += x.claim
			s.publish += x.publish
			s.finish += x.finish
		}
		k := time.Duration(len(part))
		ms := func(d time.Duration) float64 { return float64(d/k) / float64(time.Millisecond) }
		fmt.Fprintf(&b, " Q%d %d, %.2f/%.2f/%.2f;", q+1, s.rows/len(part), ms(s.claim), ms(s.publish), ms(s.finish))
	}
	return b.String()
}
