package gormstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

func TestHasDue(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		s, err := gormstore.New(db, gormstore.Config{})
		require.NoError(t, err)
		require.NoError(t, s.Migrate(ctx))
		due := func(topics ...string) bool {
			ok, err := s.HasDue(ctx, topics)
			require.NoError(t, err)
			return ok
		}
		require.False(t, due(), "empty table")
		require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
			return s.Save(ctx, tx, []outbox.Record{record("a", "k", "1")})
		}))
		require.True(t, due())
		require.True(t, due("a"))
		require.False(t, due("b"), "topic filter")
		require.NoError(t, db.Exec("UPDATE txoutbox_outbox SET failed_at = created_at").Error)
		require.False(t, due(), "parked rows are not due")

		save := func(key string) {
			require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
				return s.Save(ctx, tx, []outbox.Record{record("a", key, "2")})
			}))
		}
		save("k")
		require.False(t, due(), "a key's rows wait behind its parked row")
		require.NoError(t, db.Exec("UPDATE txoutbox_outbox SET failed_at = NULL, attempts = 1, next_attempt_at = ? WHERE failed_at IS NOT NULL",
			time.Now().Add(time.Hour).UTC()).Error)
		require.False(t, due(), "a key's rows wait behind its row that waits for a retry")
		save("other")
		require.True(t, due(), "other keys are due")
	})
}

// On PostgreSQL a row whose key another claim holds is not due: a claim
// would find nothing. Unordered rows count while pending.
func TestHasDueSkipsKeysHeldByClaims(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, db := migrated(t, testdb.Postgres, gormstore.Config{})
	due := func() bool {
		ok, err := s.HasDue(ctx, nil)
		require.NoError(t, err)
		return ok
	}
	require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
		return s.Save(ctx, tx, []outbox.Record{record("a", "k", "1")})
	}))
	held, err := s.Claim(ctx, outbox.ClaimParams{Limit: 1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = held.Release(ctx) }) // before the schema is dropped, also on failure
	require.Len(t, held.Rows(), 1)
	require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
		return s.Save(ctx, tx, []outbox.Record{record("a", "k", "2")})
	}))
	require.False(t, due(), "k's next row waits for the claim that holds k")
	require.NoError(t, held.Release(ctx))
	require.True(t, due(), "k is free again")

	held2, err := s.Claim(ctx, outbox.ClaimParams{Limit: 10})
	require.NoError(t, err)
	t.Cleanup(func() { _ = held2.Release(ctx) })
	require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
		return s.Save(ctx, tx, []outbox.Record{record("a", "", "unordered")})
	}))
	require.True(t, due(), "an unordered row is due")
}
