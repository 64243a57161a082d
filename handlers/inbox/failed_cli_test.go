package inbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
)

// seedFailed inserts a failed-table row for consumer.
func (f *fixture) seedFailed(t *testing.T, consumer, uuid string, status inbox.Status) {
	t.Helper()
	at := timeArg(f.dialect, time.Now())
	require.NoError(t, f.db.Exec(`INSERT INTO `+f.in.FailedTable()+` (consumer, message_uuid, topic, partition_key, payload, metadata, status, error, attempts, failed_at)
VALUES (?, ?, 'orders', 'k', ?, '{}', ?, 'boom', 1, ?)`, consumer, uuid, []byte("p"), string(status), at).Error)
}

// RetryUUIDs and DiscardUUIDs say which of the UUIDs they changed.
func TestRetryAndDiscardUUIDs(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		ctx := context.Background()
		f.seedFailed(t, "billing", "u2", inbox.StatusFailed)
		f.seedFailed(t, "billing", "u1", inbox.StatusFailed)
		f.seedFailed(t, "billing", "u3", inbox.StatusHeld)
		f.seedFailed(t, "shipping", "u4", inbox.StatusFailed)
		table := f.in.FailedTable()

		got, err := f.in.RetryUUIDs(ctx, "billing", "u2", "u1", "u3", "u4", "nope")
		require.NoError(t, err)
		require.Equal(t, []string{"u1", "u2"}, got, "held rows, other consumers' rows and unknown UUIDs are not marked")
		require.EqualValues(t, 2, testdb.Count(t, f.db, table, "status = 'retry'"))
		require.EqualValues(t, 1, testdb.Count(t, f.db, table, "message_uuid = 'u4' AND status = 'failed'"))

		got, err = f.in.RetryUUIDs(ctx, "billing", "u1")
		require.NoError(t, err)
		require.Empty(t, got, "already marked")
		require.NotNil(t, got)
		_, err = f.in.RetryUUIDs(ctx, "", "u1")
		require.ErrorIs(t, err, inbox.ErrNoConsumer)

		got, err = f.in.DiscardUUIDs(ctx, "billing", "u3", "u4", "nope")
		require.NoError(t, err)
		require.Equal(t, []string{"u3"}, got)
		require.Zero(t, testdb.Count(t, f.db, table, "message_uuid = 'u3'"))
		require.EqualValues(t, 1, testdb.Count(t, f.db, table, "message_uuid = 'u4'"), "another consumer's row stays")
		_, err = f.in.DiscardUUIDs(ctx, "", "u4")
		require.ErrorIs(t, err, inbox.ErrNoConsumer)
	})
}

func TestCountCleanup(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		ctx := context.Background()
		for i, age := range []time.Duration{40 * 24 * time.Hour, 40 * 24 * time.Hour, 2 * time.Hour} {
			at := timeArg(d, time.Now().Add(-age))
			require.NoError(t, f.db.Exec(`INSERT INTO `+f.in.Table()+` (consumer, message_uuid, received_at) VALUES ('c', ?, ?)`, string(rune('a'+i)), at).Error)
		}
		n, err := f.in.CountCleanup(ctx, 30*24*time.Hour)
		require.NoError(t, err)
		require.EqualValues(t, 2, n)
		n, err = f.in.CountCleanup(ctx, time.Hour)
		require.NoError(t, err)
		require.EqualValues(t, 3, n)
		require.EqualValues(t, 3, testdb.Count(t, f.db, f.in.Table(), ""), "counting deletes nothing")
		_, err = f.in.CountCleanup(ctx, 0)
		require.ErrorIs(t, err, inbox.ErrInvalidConfig)
	})
}
