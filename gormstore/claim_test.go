package gormstore_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
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

// claimTwoOfThreeKeys saves 60 rows on keys k0, k1, k2 (round robin) on
// PostgreSQL and claims 10 of them: the rows of k0 and k1 among the oldest
// pending rows fill the batch, so the claim takes those two keys and
// leaves k2 free. The claim is released when the test ends.
func claimTwoOfThreeKeys(t *testing.T) (*gormstore.Store, *gorm.DB, outbox.Claim) {
	t.Helper()
	s, db := migrated(t, testdb.Postgres, gormstore.Config{})
	saveInterleaved(t, s, db, 3, 60)
	first, err := s.Claim(context.Background(), outbox.ClaimParams{Limit: 10})
	require.NoError(t, err)
	t.Cleanup(func() { _ = first.Release(context.Background()) })
	require.Equal(t, map[string]int{"k0": 5, "k1": 5}, claimKeys(first))
	requirePrefixes(t, db, first)
	return s, db, first
}

// A claim holds only the keys of the rows it returns: a concurrent claim
// that skips those keys takes the others, a prefix of each.
func TestClaimLeavesOtherKeysToConcurrentClaims(t *testing.T) {
	t.Parallel()
	s, db, _ := claimTwoOfThreeKeys(t)
	ctx := context.Background()

	second, err := s.Claim(ctx, outbox.ClaimParams{Limit: 10, ExcludeKeys: []string{"k0", "k1"}})
	require.NoError(t, err)
	defer second.Release(ctx)
	require.Equal(t, map[string]int{"k2": 10}, claimKeys(second))
	requirePrefixes(t, db, second)

	// Without skipping any key, a third claim finds every key held.
	third, err := s.Claim(ctx, outbox.ClaimParams{Limit: 10})
	require.NoError(t, err)
	defer third.Release(ctx)
	require.Empty(t, third.Rows())
}

// A claim of another forwarder, which cannot tell which keys are held
// elsewhere, fills its batch from the free keys: on meeting held keys it
// claims again without them, and so do its later claims (and HasDue).
// Topic-filtered claims do the same.
func TestClaimSkipsKeysHeldElsewhere(t *testing.T) {
	t.Parallel()
	_, db, _ := claimTwoOfThreeKeys(t)
	ctx := context.Background()

	other, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)
	for _, topics := range [][]string{nil, {"t"}, nil} {
		due, err := other.HasDue(ctx, topics)
		require.NoError(t, err)
		require.True(t, due)
		second, err := other.Claim(ctx, outbox.ClaimParams{Limit: 10, Topics: topics})
		require.NoError(t, err)
		release := func() { _ = second.Release(ctx) }
		t.Cleanup(release) // before the schema is dropped, if a check fails
		require.Equal(t, map[string]int{"k2": 10}, claimKeys(second), "topics %v", topics)
		requirePrefixes(t, db, second)
		release()
	}
}

// ExcludeKeys skips the rows of the keys the caller holds elsewhere, so
// the claim fills its batch from the other keys. (SQLite serialises claims
// and ignores it.)
func TestClaimExcludeKeys(t *testing.T) {
	t.Parallel()
	s, db := migrated(t, testdb.Postgres, gormstore.Config{})
	ctx := context.Background()
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

// A claim returns its rows as they were saved, byte for byte, whatever
// protocol the pool speaks: pgx's default extended protocol, whose raw
// values the claim reads directly, and the simple protocol (all text),
// which goes through pgx's Scan. A batch's rows share no buffers.
func TestClaimReadsRowsAsSaved(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"", "simple_protocol"} {
		t.Run("mode="+cmp.Or(mode, "default"), func(t *testing.T) {
			t.Parallel()
			db, schema := testdb.OpenPostgres(t)
			if mode != "" {
				db = testdb.OpenURL(t, testdb.SchemaURL(t, schema)+"&default_query_exec_mode="+mode)
			}
			s, err := gormstore.New(db, gormstore.Config{})
			require.NoError(t, err)
			ctx := context.Background()
			require.NoError(t, s.Migrate(ctx))

			binary := make([]byte, 256)
			for i := range binary {
				binary[i] = byte(i)
			}
			recs := []outbox.Record{
				record("orders", "order-1", `{"id":"order-1"}`),
				{Topic: "blobs", Message: message.NewMessage(outbox.NewUUID(), binary)},
				record("orders", "order-2", ""),
				{Topic: "orders", PartitionKey: "order-1", Message: message.NewMessage(outbox.NewUUID(), nil)},
				record("invoices", "order-2", "plain text"),
			}
			recs[0].Message.Metadata = message.Metadata{"name": "OrderPlaced", "note": "żółw 🐢 \"quoted\"\n"}
			recs[2].Message.Metadata = message.Metadata{"name": "OrderPlaced"}
			// More rows than a small claim's first buffer, and more bytes than
			// the connection's read buffer.
			for i := range 300 {
				recs = append(recs, record("orders", fmt.Sprintf("k%d", i%7), fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", 1000))))
			}
			require.NoError(t, db.Transaction(func(tx *gorm.DB) error { return s.Save(ctx, tx, recs) }))

			// One failed attempt, retried at once, so a row comes back with
			// attempts = 1.
			c, err := s.Claim(ctx, outbox.ClaimParams{Limit: 1})
			require.NoError(t, err)
			require.Len(t, c.Rows(), 1)
			require.NoError(t, c.Finish(ctx, nil, []outbox.Failure{{ID: c.Rows()[0].ID, Error: "boom"}}))

			c, err = s.Claim(ctx, outbox.ClaimParams{Limit: 1000})
			require.NoError(t, err)
			defer c.Release(ctx)
			rows := c.Rows()
			require.Len(t, rows, len(recs))
			for i, rec := range recs {
				r := rows[i]
				require.Equal(t, rec.Message.UUID, r.UUID, "row %d", i)
				require.Equal(t, rec.Topic, r.Topic, "row %d", i)
				require.Equal(t, rec.PartitionKey, r.PartitionKey, "row %d", i)
				require.Equal(t, string(rec.Message.Payload), string(r.Payload), "row %d", i)
				var md map[string]string
				require.NoError(t, json.Unmarshal(r.Metadata, &md), "row %d", i)
				require.Equal(t, nilIfEmpty(rec.Message.Metadata), nilIfEmpty(md), "row %d", i)
				wantAttempts := 0
				if i == 0 {
					wantAttempts = 1 // the row that failed once
				}
				require.Equal(t, wantAttempts, r.Attempts, "row %d", i)
				if i > 0 {
					require.Greater(t, r.ID, rows[i-1].ID)
				}
			}
		})
	}
}

func nilIfEmpty(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}
