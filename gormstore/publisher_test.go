package gormstore_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

func TestPublisher(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		st, err := gormstore.New(db, gormstore.Config{})
		require.NoError(t, err)
		require.NoError(t, st.Migrate(ctx))
		pub, err := gormstore.NewPublisher(st)
		require.NoError(t, err)
		count := func(where string) int64 { return testdb.Count(t, db, "txoutbox_outbox", where) }

		// Own transaction.
		m := message.NewMessage("", []byte("a"))
		m.Metadata.Set(outbox.MetadataPartitionKey, "k1")
		require.NoError(t, pub.Publish("t1", m, message.NewMessage("u-2", []byte("b"))))
		require.Equal(t, int64(2), count("topic = 't1'"))
		require.Equal(t, int64(1), count("partition_key = 'k1'"))
		require.NotEmpty(t, m.UUID, "a UUID was assigned")

		// An application transaction from WithTx: rolled back with it.
		tx := db.Begin()
		m = message.NewMessage("u-3", []byte("c"))
		m.SetContext(outbox.WithTx(ctx, tx))
		require.NoError(t, pub.Publish("t2", m))
		require.NoError(t, tx.Rollback().Error)
		require.Equal(t, int64(0), count("topic = 't2'"))

		// Inside a transactional handler: saved at commit, or not at all.
		tr, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: st})
		require.NoError(t, err)
		require.NoError(t, tr.Run(ctx, "Cmd", func(ctx context.Context) error {
			m := message.NewMessage("u-4", []byte("d"))
			m.SetContext(ctx)
			return pub.Publish("t3", m)
		}))
		metadataText := "CAST(metadata AS TEXT)"
		if db.Dialector.Name() == "mysql" {
			metadataText = "CAST(metadata AS CHAR)"
		}
		require.Equal(t, int64(1), count("topic = 't3' AND "+metadataText+" LIKE '%causation_id%'"))

		require.NoError(t, pub.Close())
		require.ErrorIs(t, pub.Publish("t1", message.NewMessage("u-5", nil)), gormstore.ErrPublisherClosed)
	})
}

func TestPublisherBadInput(t *testing.T) {
	t.Parallel()
	_, err := gormstore.NewPublisher(nil)
	require.ErrorIs(t, err, gormstore.ErrInvalidConfig)
	db := testdb.Open(t, testdb.SQLite)
	st, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)
	pub, err := gormstore.NewPublisher(st)
	require.NoError(t, err)
	require.ErrorIs(t, pub.Publish("", message.NewMessage("x", nil)), outbox.ErrEmptyTopic)
	require.ErrorIs(t, pub.Publish("t", nil), outbox.ErrNilEvent)
}
