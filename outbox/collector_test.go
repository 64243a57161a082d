package outbox_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/outbox"
)

func newTestCollector(readOnly bool) (*outbox.Collector, context.Context) {
	col := outbox.NewCollector(readOnly)
	return col, outbox.WithCollector(context.Background(), col, encCmd)
}

func entryEvents(entries []outbox.Entry) []any {
	out := make([]any, len(entries))
	for i, e := range entries {
		out[i] = e.Event
	}
	return out
}

func TestEmitWithoutCollector(t *testing.T) {
	t.Parallel()
	require.ErrorIs(t, outbox.Emit(context.Background(), encOrderPlaced{}), outbox.ErrNoTransaction)
	require.ErrorIs(t, outbox.Emit(context.Background()), outbox.ErrNoTransaction)
	ctx := outbox.WithCollector(context.Background(), nil, encCmd)
	require.ErrorIs(t, outbox.Emit(ctx, encOrderPlaced{}), outbox.ErrNoTransaction, "a nil collector is no collector")
	_, _, ok := outbox.CollectorFrom(ctx)
	require.False(t, ok)
}

func TestEmitRecordsInOrder(t *testing.T) {
	t.Parallel()
	col, ctx := newTestCollector(false)
	require.NoError(t, outbox.Emit(ctx, encOrderPlaced{OrderID: "1"}, encOrderPlaced{OrderID: "2"}))
	require.NoError(t, outbox.Emit(ctx))
	require.NoError(t, outbox.Emit(ctx, &encOrderPlaced{OrderID: "3"}))

	entries := col.Entries()
	require.Equal(t, []any{encOrderPlaced{OrderID: "1"}, encOrderPlaced{OrderID: "2"}, &encOrderPlaced{OrderID: "3"}}, entryEvents(entries))
	for _, e := range entries {
		require.Equal(t, encCmd, e.Command)
	}
	require.NoError(t, col.Err())

	got, cmd, ok := outbox.CollectorFrom(ctx)
	require.True(t, ok)
	require.Same(t, col, got)
	require.Equal(t, encCmd, cmd)

	// Entries returns a copy.
	entries[0].Event = "changed"
	require.Equal(t, encOrderPlaced{OrderID: "1"}, col.Entries()[0].Event)
}

func TestEmitNilEvent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		events []any
		pos    string
	}{
		{"nil", []any{nil}, "event 1 of 1"},
		{"typed nil pointer", []any{encOrderPlaced{}, (*encOrderPlaced)(nil)}, "event 2 of 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			col, ctx := newTestCollector(false)
			_ = outbox.Emit(ctx, tc.events...) // the handler ignores the error...
			// ...the collector still has it, so the command cannot commit.
			require.ErrorIs(t, col.Err(), outbox.ErrNilEvent)
			require.ErrorContains(t, col.Err(), tc.pos)
			require.ErrorContains(t, col.Err(), encCmd.Name)
			require.Empty(t, col.Entries(), "a call with a nil event records none of its events")

			col, ctx = newTestCollector(false)
			require.ErrorIs(t, outbox.Emit(ctx, tc.events...), outbox.ErrNilEvent)
		})
	}
}

func TestCollectorKeepsFirstError(t *testing.T) {
	t.Parallel()
	col, ctx := newTestCollector(false)
	require.ErrorIs(t, outbox.Emit(ctx, nil), outbox.ErrNilEvent)
	require.NoError(t, outbox.Emit(ctx, encOrderPlaced{}))
	require.ErrorIs(t, col.Err(), outbox.ErrNilEvent, "a later good Emit does not clear the error")
	require.Len(t, col.Entries(), 1)
}

func TestEmitReadOnly(t *testing.T) {
	t.Parallel()
	col, ctx := newTestCollector(true)
	require.True(t, col.ReadOnly())
	require.ErrorIs(t, outbox.Emit(ctx, encOrderPlaced{}), outbox.ErrReadOnly)
	require.ErrorIs(t, col.Err(), outbox.ErrReadOnly)
	require.Empty(t, col.Entries())
	require.False(t, outbox.NewCollector(false).ReadOnly())
}

func TestEmitAfterClose(t *testing.T) {
	t.Parallel()
	col, ctx := newTestCollector(false)
	require.NoError(t, outbox.Emit(ctx, encOrderPlaced{OrderID: "1"}))
	col.Close()
	require.ErrorIs(t, outbox.Emit(ctx, encOrderPlaced{OrderID: "2"}), outbox.ErrCollectorClosed)
	require.Equal(t, []any{encOrderPlaced{OrderID: "1"}}, entryEvents(col.Entries()))
	col.Close() // idempotent
	require.ErrorIs(t, outbox.Emit(ctx, nil), outbox.ErrCollectorClosed)
}

func TestCollectorMerge(t *testing.T) {
	t.Parallel()
	parent, pctx := newTestCollector(false)
	require.NoError(t, outbox.Emit(pctx, encOrderPlaced{OrderID: "p1"}))

	childCmd := outbox.Command{ID: "cmd-2", Name: "ReserveStock", CorrelationID: encCmd.CorrelationID}
	child := outbox.NewCollector(false)
	cctx := outbox.WithCollector(pctx, child, childCmd)
	require.NoError(t, outbox.Emit(cctx, encOrderPlaced{OrderID: "c1"}, encOrderPlaced{OrderID: "c2"}))
	require.NoError(t, outbox.Emit(pctx, encOrderPlaced{OrderID: "p2"}))
	require.NoError(t, parent.Merge(child))

	entries := parent.Entries()
	require.Equal(t, []any{encOrderPlaced{OrderID: "p1"}, encOrderPlaced{OrderID: "p2"}, encOrderPlaced{OrderID: "c1"}, encOrderPlaced{OrderID: "c2"}}, entryEvents(entries))
	require.Equal(t, []outbox.Command{encCmd, encCmd, childCmd, childCmd},
		[]outbox.Command{entries[0].Command, entries[1].Command, entries[2].Command, entries[3].Command},
		"merged entries keep the command that emitted them")
	require.NoError(t, parent.Merge(outbox.NewCollector(false)), "merging an empty child")
	require.Len(t, parent.Entries(), 4)
}

func TestCollectorMergeFailedChild(t *testing.T) {
	t.Parallel()
	parent, pctx := newTestCollector(false)
	child := outbox.NewCollector(false)
	cctx := outbox.WithCollector(pctx, child, encCmd)
	require.NoError(t, outbox.Emit(cctx, encOrderPlaced{OrderID: "c1"}))
	_ = outbox.Emit(cctx, nil)

	require.ErrorIs(t, parent.Merge(child), outbox.ErrNilEvent)
	require.Empty(t, parent.Entries(), "a failed child's events are not merged")
}

func TestCollectorMergeIntoClosed(t *testing.T) {
	t.Parallel()
	parent := outbox.NewCollector(false)
	parent.Close()
	child, cctx := newTestCollector(false)
	require.NoError(t, outbox.Emit(cctx, encOrderPlaced{}))
	require.ErrorIs(t, parent.Merge(child), outbox.ErrCollectorClosed)
	require.Empty(t, parent.Entries())
}

func TestEmitConcurrent(t *testing.T) {
	t.Parallel()
	col, ctx := newTestCollector(false)
	const workers, each = 8, 200
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := outbox.Emit(ctx, encOrderPlaced{OrderID: fmt.Sprintf("%d-%d", w, i), Total: i}); err != nil {
					errs[w] = err
					return
				}
			}
		}()
	}
	// Readers run alongside the writers.
	for range 100 {
		_ = col.Entries()
		_ = col.Err()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}

	entries := col.Entries()
	require.Len(t, entries, workers*each)
	next := map[int]int{} // per worker, the next Total expected: each goroutine's events stay in order
	seen := map[string]bool{}
	for _, e := range entries {
		ev := e.Event.(encOrderPlaced)
		require.False(t, seen[ev.OrderID], "event %s recorded twice", ev.OrderID)
		seen[ev.OrderID] = true
		var w, i int
		_, err := fmt.Sscanf(ev.OrderID, "%d-%d", &w, &i)
		require.NoError(t, err)
		require.Equal(t, next[w], i, "worker %d out of order", w)
		next[w]++
	}
	require.NoError(t, col.Err())
}

func TestCorrelationID(t *testing.T) {
	t.Parallel()
	bg := context.Background()
	require.Empty(t, outbox.CorrelationID(bg))

	req := outbox.WithCorrelationID(bg, "req-1")
	require.Equal(t, "req-1", outbox.CorrelationID(req))

	inCmd := outbox.WithCollector(req, outbox.NewCollector(false), outbox.Command{ID: "c", CorrelationID: "cmd-corr"})
	require.Equal(t, "cmd-corr", outbox.CorrelationID(inCmd), "the running command's correlation ID wins")

	noCorr := outbox.WithCollector(req, outbox.NewCollector(false), outbox.Command{ID: "c"})
	require.Equal(t, "req-1", outbox.CorrelationID(noCorr), "a command without one falls back to WithCorrelationID")

	require.Equal(t, "req-2", outbox.CorrelationID(outbox.WithCorrelationID(req, "req-2")), "the innermost WithCorrelationID wins")
}

type parentKey struct{}

// The context WithCollector returns is its parent's in everything but the
// collector and command: values, cancellation, deadline.
func TestWithCollectorContext(t *testing.T) {
	t.Parallel()
	deadline := time.Now().Add(time.Hour)
	parent, cancel := context.WithDeadline(context.WithValue(context.Background(), parentKey{}, "v"), deadline)
	col := outbox.NewCollector(false)
	ctx := outbox.WithCollector(parent, col, encCmd)

	require.Equal(t, "v", ctx.Value(parentKey{}))
	got, ok := ctx.Deadline()
	require.True(t, ok)
	require.Equal(t, deadline, got)
	require.Contains(t, fmt.Sprint(ctx), "WithCollector(PlaceOrder)")

	// A context derived from it is cancelled with the parent.
	child, cancelChild := context.WithCancel(context.WithValue(ctx, parentKey{}, "child"))
	defer cancelChild()
	gotCol, cmd, ok := outbox.CollectorFrom(child)
	require.True(t, ok)
	require.Same(t, col, gotCol)
	require.Equal(t, encCmd, cmd)
	cancel()
	<-child.Done()
	require.ErrorIs(t, ctx.Err(), context.Canceled)

	// The innermost collector wins.
	inner := outbox.NewCollector(false)
	innerCmd := outbox.Command{ID: "cmd-2", Name: "Inner"}
	gotCol, cmd, ok = outbox.CollectorFrom(outbox.WithCollector(child, inner, innerCmd))
	require.True(t, ok)
	require.Same(t, inner, gotCol)
	require.Equal(t, innerCmd, cmd)
	require.Equal(t, encCmd.CorrelationID, outbox.CorrelationID(child))
}

// Entries beyond the first, from one Emit or many, and merged ones keep
// their order.
func TestCollectorGrows(t *testing.T) {
	t.Parallel()
	col, ctx := newTestCollector(false)
	var want []any
	for i := range 20 {
		evs := make([]any, i%3)
		for j := range evs {
			evs[j] = encOrderPlaced{OrderID: fmt.Sprint(i, "-", j)}
		}
		require.NoError(t, outbox.Emit(ctx, evs...))
		want = append(want, evs...)
	}
	child, cctx := newTestCollector(false)
	for i := range 9 {
		require.NoError(t, outbox.Emit(cctx, encOrderPlaced{OrderID: fmt.Sprint("c", i)}))
		want = append(want, encOrderPlaced{OrderID: fmt.Sprint("c", i)})
	}
	require.NoError(t, col.Merge(child))
	require.Equal(t, want, entryEvents(col.Entries()))
}
