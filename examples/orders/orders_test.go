package orders_test

import (
	"path/filepath"
	"testing"

	"github.com/glebarez/sqlite"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/examples/orders"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers/handlertest"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// openTestDB returns a SQLite database of this test with the orders and
// outbox tables. Tests on PostgreSQL would open a schema of their own.
func openTestDB(t *testing.T) *gorm.DB {
	t.Helper()
	dsn := "file:" + filepath.Join(t.TempDir(), "test.db") + "?_pragma=busy_timeout(10000)&_txlock=immediate"
	db, err := gorm.Open(sqlite.Open(dsn), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	t.Cleanup(func() {
		if sqlDB, err := db.DB(); err == nil {
			_ = sqlDB.Close()
		}
	})
	require.NoError(t, db.AutoMigrate(&orders.Order{}))
	require.NoError(t, gormstore.Migrate(t.Context(), db))
	return db
}

func TestPlaceOrder(t *testing.T) {
	t.Parallel()
	k := handlertest.New(t, handlertest.Config{DB: openTestDB(t)})

	rec := handlertest.Call(k, orders.Place, orders.PlaceOrder{OrderID: "o-1", Customer: "ada"})
	placed := handlertest.Emitted[orders.OrderPlaced](t, rec)
	require.Equal(t, []orders.OrderPlaced{{OrderID: "o-1", Customer: "ada"}}, placed)
	require.Equal(t, "o-1", rec.Records()[0].PartitionKey)

	var o orders.Order
	require.NoError(t, k.Tx().Take(&o, "id = ?", "o-1").Error) // the handler's write, visible here
	require.Equal(t, "ada", o.Customer)
}

func TestPlaceOrderWithoutCustomer(t *testing.T) {
	t.Parallel()
	k := handlertest.New(t, handlertest.Config{DB: openTestDB(t)})

	rec := handlertest.Call(k, orders.Place, orders.PlaceOrder{OrderID: "o-2", Customer: "  "})
	require.ErrorIs(t, rec.Err(), orders.ErrNoCustomer)
	require.Zero(t, rec.Len(), "nothing emitted")

	var n int64
	require.NoError(t, k.Tx().Model(&orders.Order{}).Count(&n).Error)
	require.Zero(t, n, "nothing written")
}
