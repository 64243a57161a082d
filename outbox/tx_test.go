package outbox_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

func TestTxOutsideHandler(t *testing.T) {
	t.Parallel()
	tx, err := outbox.Tx(context.Background())
	require.ErrorIs(t, err, outbox.ErrNoTransaction)
	require.Nil(t, tx)

	tx, err = outbox.Tx(outbox.WithTx(context.Background(), nil))
	require.ErrorIs(t, err, outbox.ErrNoTransaction)
	require.Nil(t, tx)
}

// TestWithTxRoundTrip checks that Tx returns the very transaction WithTx
// stored, bound to the context it is asked with: its writes roll back with
// the transaction, and a canceled context stops its queries.
func TestWithTxRoundTrip(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		require.NoError(t, db.Exec(`CREATE TABLE orders (id INTEGER PRIMARY KEY)`).Error)

		err := db.Transaction(func(tx *gorm.DB) error {
			ctx := outbox.WithTx(context.Background(), tx)
			got, err := outbox.Tx(ctx)
			require.NoError(t, err)
			require.Same(t, tx.Statement.ConnPool, got.Statement.ConnPool, "Tx must return the stored transaction")
			require.Equal(t, ctx, got.Statement.Context, "Tx must bind the transaction to ctx")
			require.NoError(t, got.Exec(`INSERT INTO orders (id) VALUES (1)`).Error)
			require.Equal(t, int64(1), testdb.Count(t, tx, "orders", ""), "the write is in the transaction")

			canceled, cancel := context.WithCancel(ctx)
			cancel()
			bound, err := outbox.Tx(canceled)
			require.NoError(t, err)
			require.ErrorIs(t, bound.Exec(`INSERT INTO orders (id) VALUES (2)`).Error, context.Canceled)
			return errTxRollback
		})
		require.ErrorIs(t, err, errTxRollback)
		require.Zero(t, testdb.Count(t, db, "orders", ""), "the write rolled back with the transaction")
	})
}

var errTxRollback = errors.New("roll back")
