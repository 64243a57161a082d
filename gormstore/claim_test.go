package gormstore_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// saveInterleaved saves rows rows on keys k0..k(keys-1), round robin.
func saveInterleaved(t *testing.T, s *gormstore.Store, db *gorm.DB, keys, rows int) {
	t.Helper()
	recs := make([]outbox.Record, rows)
	for i := range recs {
		recs[i] = record("t", fmt.Sprintf("k%d", i%keys), fmt.Sprint(i))
	}
	require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
		return s.Save(context.Background(), tx, recs)
	}))
}

func claimKeys(c outbox.Claim) map[string]int {
	keys := map[string]int{}
	for _, r := range c.Rows() {
		keys[r.PartitionKey]++
	}
	return keys
}

// A claim holds only the keys of the rows it returns: a concurrent claim
// that skips those keys takes the others, a prefix of each.
func TestClaimLeavesOtherKeysToConcurrentClaims(t *testing.T) {
	t.Parallel()
	db, _ := testdb.OpenPostgres(t)
	s, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, s.Migrate(ctx))
	saveInterleaved(t, s, db, 2, 40) // k0, k1, k0, k1, ...

	// The 10 rows of k0 among the oldest pending rows fill the batch, so
	// the claim takes k0 alone and leaves k1 free.
	first, err := s.Claim(ctx, outbox.ClaimParams{Limit: 10})
	require.NoError(t, err)
	defer first.Release(ctx)
	require.Equal(t, map[string]int{"k0": 10}, claimKeys(first))
	requirePrefixes(t, db, first)

	second, err := s.Claim(ctx, outbox.ClaimParams{Limit: 10, ExcludeKeys: []string{"k0"}})
	require.NoError(t, err)
	defer second.Release(ctx)
	require.Equal(t, map[string]int{"k1": 10}, claimKeys(second))
	requirePrefixes(t, db, second)

	// Without skipping k0, a third claim finds both keys held.
	third, err := s.Claim(ctx, outbox.ClaimParams{Limit: 10})
	require.NoError(t, err)
	defer third.Release(ctx)
	require.Empty(t, third.Rows())
}

// ExcludeKeys skips the rows of the keys the caller holds elsewhere, so
// the claim fills its batch from the other keys. (SQLite serialises claims
// and ignores it.)
func TestClaimExcludeKeys(t *testing.T) {
	t.Parallel()
	db, _ := testdb.OpenPostgres(t)
	s, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, s.Migrate(ctx))
	saveInterleaved(t, s, db, 4, 40)

	c, err := s.Claim(ctx, outbox.ClaimParams{Limit: 20, ExcludeKeys: []string{"k0", "k2"}})
	require.NoError(t, err)
	defer c.Release(ctx)
	require.Equal(t, map[string]int{"k1": 10, "k3": 10}, claimKeys(c))
	requirePrefixes(t, db, c)
}

// requirePrefixes checks that the claim holds, per key, the key's oldest
// undelivered rows in ID order.
func requirePrefixes(t *testing.T, db *gorm.DB, c outbox.Claim) {
	t.Helper()
	got := map[string][]int64{}
	for _, r := range c.Rows() {
		got[r.PartitionKey] = append(got[r.PartitionKey], r.ID)
	}
	for k, ids := range got {
		var want []int64
		require.NoError(t, db.Raw("SELECT id FROM txoutbox_outbox WHERE partition_key = ? ORDER BY id LIMIT ?", k, len(ids)).Scan(&want).Error)
		require.Equal(t, want, ids, "key %s", k)
	}
}
