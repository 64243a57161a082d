package gormstore_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"gorm.io/gorm"
)

// adminFixture seeds a migrated store with parked rows of topics "orders"
// (uuids o-1..o-3) and "mail" (m-1, m-2), and pending (p-1, p-2) and
// delivered (d-1) rows of "orders".
func adminFixture(t *testing.T, db *gorm.DB) *gormstore.Store {
	t.Helper()
	s, err := gormstore.New(db, gormstore.Config{KeepDelivered: true})
	require.NoError(t, err)
	require.NoError(t, s.Migrate(context.Background()))
	seedRows(t, db, "o", "parked", 3, time.Hour)
	seedRows(t, db, "m", "parked", 2, time.Hour)
	seedRows(t, db, "p", "pending", 2, time.Hour)
	seedRows(t, db, "d", "delivered", 1, time.Hour)
	require.NoError(t, db.Exec(`UPDATE txoutbox_outbox SET topic = 'mail' WHERE uuid LIKE 'm-%'`).Error)
	return s
}

// idOf returns the ID of the row with uuid.
func idOf(t *testing.T, db *gorm.DB, uuid string) int64 {
	t.Helper()
	var id int64
	require.NoError(t, db.Raw(`SELECT id FROM txoutbox_outbox WHERE uuid = ?`, uuid).Scan(&id).Error)
	require.NotZero(t, id, uuid)
	return id
}

func TestRequeueAndDiscardTopic(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		s := adminFixture(t, db)
		ctx := context.Background()

		n, err := s.RequeueTopic(ctx, "mail")
		require.NoError(t, err)
		require.EqualValues(t, 2, n)
		require.EqualValues(t, 2, testdb.Count(t, db, "txoutbox_outbox", "uuid LIKE 'm-%' AND failed_at IS NULL AND attempts = 0"))
		require.EqualValues(t, 3, testdb.Count(t, db, "txoutbox_outbox", "failed_at IS NOT NULL"), "other topics stay parked")

		n, err = s.RequeueTopic(ctx, "nope")
		require.NoError(t, err)
		require.Zero(t, n)

		n, err = s.DiscardTopic(ctx, "mail")
		require.NoError(t, err)
		require.Zero(t, n, "requeued rows are pending, never discarded")
		n, err = s.DiscardTopic(ctx, "orders")
		require.NoError(t, err)
		require.EqualValues(t, 3, n)
		require.Zero(t, testdb.Count(t, db, "txoutbox_outbox", "uuid LIKE 'o-%'"))
		require.EqualValues(t, 5, testdb.Count(t, db, "txoutbox_outbox", ""), "pending and delivered rows stay")
	})
}

func TestDiscardAll(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		s := adminFixture(t, db)
		n, err := s.DiscardAll(context.Background())
		require.NoError(t, err)
		require.EqualValues(t, 5, n)
		require.Zero(t, testdb.Count(t, db, "txoutbox_outbox", "failed_at IS NOT NULL"))
		require.EqualValues(t, 2, testdb.Count(t, db, "txoutbox_outbox", "uuid LIKE 'p-%'"))
		require.EqualValues(t, 1, testdb.Count(t, db, "txoutbox_outbox", "uuid = 'd-1'"))
		n, err = s.DiscardAll(context.Background())
		require.NoError(t, err)
		require.Zero(t, n)
	})
}

// RequeueIDs and DiscardIDs say which of the IDs they changed.
func TestRequeueAndDiscardIDs(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		s := adminFixture(t, db)
		ctx := context.Background()
		o1, o2, o3 := idOf(t, db, "o-1"), idOf(t, db, "o-2"), idOf(t, db, "o-3")
		p1, d1 := idOf(t, db, "p-1"), idOf(t, db, "d-1")

		got, err := s.RequeueIDs(ctx, o2, p1, o1, d1, 999_999)
		require.NoError(t, err)
		require.Equal(t, []int64{min(o1, o2), max(o1, o2)}, got)
		require.EqualValues(t, 2, testdb.Count(t, db, "txoutbox_outbox", "uuid IN ('o-1', 'o-2') AND failed_at IS NULL AND attempts = 0"))

		got, err = s.RequeueIDs(ctx, o1)
		require.NoError(t, err)
		require.Empty(t, got, "already requeued")
		require.NotNil(t, got)

		got, err = s.DiscardIDs(ctx, o1, o3, d1, p1)
		require.NoError(t, err)
		require.Equal(t, []int64{o3}, got)
		require.Zero(t, testdb.Count(t, db, "txoutbox_outbox", "uuid = 'o-3'"))
		require.EqualValues(t, 1, testdb.Count(t, db, "txoutbox_outbox", "uuid = 'o-1'"), "a pending row is never discarded")
		require.EqualValues(t, 1, testdb.Count(t, db, "txoutbox_outbox", "uuid = 'd-1'"))

		got, err = s.DiscardIDs(ctx)
		require.NoError(t, err)
		require.Empty(t, got)
	})
}

func TestGetFailed(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		s := adminFixture(t, db)
		ctx := context.Background()
		long := "publish: broker said no;\n" + strings.Repeat("x", 500)
		require.NoError(t, db.Exec(`UPDATE txoutbox_outbox SET last_error = ?, attempts = 10, metadata = ?, payload = ? WHERE uuid = 'o-2'`,
			long, `{"partition_key":"key-2","trace":"abc"}`, []byte{0xff, 'h', 'i'}).Error)

		f, err := s.GetFailed(ctx, idOf(t, db, "o-2"))
		require.NoError(t, err)
		require.Equal(t, idOf(t, db, "o-2"), f.ID)
		require.Equal(t, "o-2", f.UUID)
		require.Equal(t, "orders", f.Topic)
		require.Equal(t, "key-2", f.PartitionKey)
		require.Equal(t, 10, f.Attempts)
		require.Equal(t, long, f.LastError, "the whole error")
		require.JSONEq(t, `{"partition_key":"key-2","trace":"abc"}`, f.Metadata)
		require.Equal(t, []byte{0xff, 'h', 'i'}, f.Payload)
		require.WithinDuration(t, time.Now().Add(-time.Hour), f.FailedAt, time.Minute)
		require.WithinDuration(t, time.Now().Add(-time.Hour), f.CreatedAt, time.Minute)

		for _, uuid := range []string{"p-1", "d-1"} {
			_, err = s.GetFailed(ctx, idOf(t, db, uuid))
			require.ErrorIs(t, err, gormstore.ErrNotFound, uuid)
		}
		_, err = s.GetFailed(ctx, 999_999)
		require.ErrorIs(t, err, gormstore.ErrNotFound)
		require.ErrorContains(t, err, "no parked row with ID 999999 in txoutbox_outbox")
	})
}

func TestCountDelivered(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		s := adminFixture(t, db)
		seedRows(t, db, "old", "delivered", 4, 48*time.Hour)
		ctx := context.Background()
		for olderThan, want := range map[time.Duration]int64{0: 5, 30 * time.Minute: 5, 24 * time.Hour: 4, 72 * time.Hour: 0} {
			n, err := s.CountDelivered(ctx, olderThan)
			require.NoError(t, err)
			require.Equal(t, want, n, olderThan)
		}
		require.EqualValues(t, 12, testdb.Count(t, db, "txoutbox_outbox", ""), "counting deletes nothing")
		_, err := s.CountDelivered(ctx, -time.Second)
		require.ErrorIs(t, err, gormstore.ErrInvalidConfig)
	})
}
