package outbox_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/outbox"
)

// NewUUID writes RFC 9562 UUIDv7s in the canonical form, with the current
// Unix milliseconds in their first 48 bits.
func TestNewUUIDFormat(t *testing.T) {
	t.Parallel()
	for range 100 {
		before := time.Now().UnixMilli()
		s := outbox.NewUUID()
		after := time.Now().UnixMilli()
		id, err := uuid.Parse(s)
		require.NoError(t, err)
		require.Equal(t, id.String(), s, "canonical lower-case form")
		require.Equal(t, uuid.Version(7), id.Version())
		require.Equal(t, uuid.RFC4122, id.Variant())
		sec, nsec := id.Time().UnixTime()
		ms := sec*1000 + nsec/int64(time.Millisecond)
		// The sequence may carry into the milliseconds by a few when
		// many IDs are made within one millisecond.
		require.GreaterOrEqual(t, ms, before, "%s", s)
		require.LessOrEqual(t, ms, after+1, "%s", s)
	}
}

// NewUUID's values increase across goroutines: every ID is greater than
// those made before it in the process.
func TestNewUUIDOrderedAcrossGoroutines(t *testing.T) {
	t.Parallel()
	const workers, each = 8, 2000
	ids := make([][]string, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range each {
				ids[w] = append(ids[w], outbox.NewUUID())
			}
		})
	}
	wg.Wait()
	var all []string
	for _, got := range ids {
		require.True(t, slices.IsSorted(got), "one goroutine's IDs are ordered")
		all = append(all, got...)
	}
	slices.Sort(all)
	require.Len(t, slices.Compact(all), workers*each, "IDs are unique")
}
