package middleware_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
)

// ItemAdded carries a payload ID unique across the whole test.
type ItemAdded struct {
	PayloadID string `json:"payload_id"`
}

// AddItems emits Events events whose payload IDs start with Prefix.
type AddItems struct {
	Prefix string
	Events int
}

func TestConcurrentCommandsSaveEveryEventOnce(t *testing.T) {
	t.Parallel()
	const (
		workers  = 8
		commands = 500
	)
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d)
		require.NoError(t, bus.Register(f.bus, func(ctx context.Context, c AddItems) error {
			if err := insertOrder(ctx, c.Prefix, c.Events); err != nil {
				return err
			}
			for i := range c.Events {
				if err := outbox.Emit(ctx, ItemAdded{PayloadID: fmt.Sprintf("%s/%d", c.Prefix, i)}); err != nil {
					return err
				}
			}
			return nil
		}))

		want := map[string]bool{}
		for w := range workers {
			for c := range commands {
				for i := range 1 + (w+c)%3 {
					want[fmt.Sprintf("w%d-c%d/%d", w, c, i)] = true
				}
			}
		}

		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				for c := range commands {
					cmd := AddItems{Prefix: fmt.Sprintf("w%d-c%d", w, c), Events: 1 + (w+c)%3}
					if err := f.bus.Dispatch(context.Background(), cmd); err != nil {
						errs <- fmt.Errorf("%s: %w", cmd.Prefix, err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}

		require.Equal(t, int64(workers*commands), f.orderCount(t, ""))
		require.Equal(t, int64(len(want)), f.outboxCount(t))
		var distinct int64
		require.NoError(t, f.db.Raw("SELECT count(DISTINCT payload) FROM "+gormstore.DefaultTable).Scan(&distinct).Error)
		require.Equal(t, int64(len(want)), distinct)

		got := map[string]bool{}
		lastIndex := map[string]int{}
		for _, r := range f.outbox(t) {
			id := r.payloadField(t, "payload_id")
			require.True(t, want[id], "unexpected event %q", id)
			require.False(t, got[id], "event %q saved twice", id)
			got[id] = true
			// Within a command the rows keep emit order.
			slash := strings.LastIndexByte(id, '/')
			require.Positive(t, slash, id)
			prefix := id[:slash]
			i, err := strconv.Atoi(id[slash+1:])
			require.NoError(t, err)
			if prev, ok := lastIndex[prefix]; ok {
				require.Equal(t, prev+1, i, "events of %s out of order", prefix)
			} else {
				require.Zero(t, i, "events of %s out of order", prefix)
			}
			lastIndex[prefix] = i
		}
		require.Len(t, got, len(want))
	})
}
