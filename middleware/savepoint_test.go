package middleware_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// The nested-command rule must not depend on GORM's nested transactions:
// with DisableNestedTransaction a swallowed inner failure still leaves
// nothing of the inner command behind.
func TestNestedRollbackWithGORMNestedTransactionsDisabled(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		db = db.Session(&gorm.Session{DisableNestedTransaction: true})
		require.NoError(t, db.Exec("CREATE TABLE notes (id VARCHAR(64) PRIMARY KEY)").Error)
		st, err := gormstore.New(db, gormstore.Config{})
		require.NoError(t, err)
		require.NoError(t, st.Migrate(ctx))
		tm, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: st})
		require.NoError(t, err)
		b := bus.New(tm.Middleware())
		errInner := errors.New("inner fails")
		type outer struct{}
		type inner struct{}
		write := func(ctx context.Context, id string) error {
			tx, err := outbox.Tx(ctx)
			if err != nil {
				return err
			}
			return tx.Exec("INSERT INTO notes (id) VALUES (?)", id).Error
		}
		require.NoError(t, bus.Register(b, func(ctx context.Context, _ inner) error {
			require.NoError(t, write(ctx, "inner"))
			require.NoError(t, outbox.Emit(ctx, OrderShipped{OrderID: "inner"}))
			return errInner
		}))
		require.NoError(t, bus.Register(b, func(ctx context.Context, _ outer) error {
			require.NoError(t, write(ctx, "outer"))
			require.ErrorIs(t, b.Dispatch(ctx, inner{}), errInner)
			return outbox.Emit(ctx, OrderShipped{OrderID: "outer"})
		}))
		require.NoError(t, b.Dispatch(ctx, outer{}))

		var notes []string
		require.NoError(t, db.Raw("SELECT id FROM notes").Scan(&notes).Error)
		require.Equal(t, []string{"outer"}, notes)
		require.Equal(t, int64(1), testdb.Count(t, db, "txoutbox_outbox", ""))
	})
}
