package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// StockReserved is emitted by ReserveStock handlers.
type StockReserved struct {
	OrderID string `json:"order_id"`
}

// OrderConfirmed is emitted by PlaceOrder handlers after the nested command.
type OrderConfirmed struct {
	OrderID string `json:"order_id"`
}

var errOutOfStock = errors.New("out of stock")

// nestedFixture registers PlaceOrder, which writes and emits, dispatches
// ReserveStock with its context, and then handles the inner error with
// onInner. ReserveStock writes the row "<id>-stock", emits StockReserved
// and fails with errOutOfStock for orders whose ID starts with "bad".
type nestedFixture struct {
	*fixture
	outerCmd, innerCmd []outbox.Command
	commits            []middleware.AfterCommitParams
}

func newNestedFixture(t *testing.T, d testdb.Dialect, onInner func(error) error) *nestedFixture {
	t.Helper()
	nf := &nestedFixture{}
	nf.fixture = newFixture(t, d, withConfig(func(c *middleware.TransactionalConfig) {
		c.AfterCommit = append(c.AfterCommit, func(p middleware.AfterCommitParams) {
			nf.commits = append(nf.commits, p)
		})
	}))
	require.NoError(t, bus.Register(nf.bus, func(ctx context.Context, c PlaceOrder) error {
		nf.outerCmd = append(nf.outerCmd, commandOf(t, ctx))
		if err := insertOrder(ctx, c.OrderID, c.Amount); err != nil {
			return err
		}
		if err := outbox.Emit(ctx, OrderPlaced{OrderID: c.OrderID, Amount: c.Amount}); err != nil {
			return err
		}
		if err := onInner(nf.bus.Dispatch(ctx, ReserveStock{OrderID: c.OrderID})); err != nil {
			return err
		}
		return outbox.Emit(ctx, OrderConfirmed{OrderID: c.OrderID})
	}))
	require.NoError(t, bus.Register(nf.bus, func(ctx context.Context, c ReserveStock) error {
		nf.innerCmd = append(nf.innerCmd, commandOf(t, ctx))
		// The nested command runs in the caller's transaction: it sees the
		// caller's uncommitted order.
		tx, err := outbox.Tx(ctx)
		require.NoError(t, err)
		var n int64
		require.NoError(t, tx.Raw("SELECT count(*) FROM orders WHERE id = ?", c.OrderID).Scan(&n).Error)
		require.Equal(t, int64(1), n, "the nested command does not see the caller's write")

		if err := insertOrder(ctx, c.OrderID+"-stock", 0); err != nil {
			return err
		}
		if err := outbox.Emit(ctx, StockReserved{OrderID: c.OrderID}); err != nil {
			return err
		}
		if len(c.OrderID) >= 3 && c.OrderID[:3] == "bad" {
			return fmt.Errorf("reserve %s: %w", c.OrderID, errOutOfStock)
		}
		return nil
	}))
	return nf
}

func TestNestedDispatchJoinsTheTransaction(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		nf := newNestedFixture(t, d, func(err error) error { return err })
		ctx := outbox.WithCorrelationID(context.Background(), "corr-1")
		require.NoError(t, nf.bus.Dispatch(ctx, PlaceOrder{OrderID: "o-1", Amount: 3}))

		require.Equal(t, int64(1), nf.orderCount(t, "id = ?", "o-1"))
		require.Equal(t, int64(1), nf.orderCount(t, "id = ?", "o-1-stock"))

		require.Len(t, nf.outerCmd, 1)
		require.Len(t, nf.innerCmd, 1)
		outer, inner := nf.outerCmd[0], nf.innerCmd[0]
		require.NotEqual(t, outer.ID, inner.ID)
		require.Equal(t, "corr-1", inner.CorrelationID, "the nested command inherits the correlation ID")

		rows := nf.outbox(t)
		require.Len(t, rows, 3, "inner and outer events saved once")
		want := []struct{ topic, causation, command string }{
			{"OrderPlaced", outer.ID, "PlaceOrder"},
			{"StockReserved", inner.ID, "ReserveStock"},
			{"OrderConfirmed", outer.ID, "PlaceOrder"},
		}
		for i, w := range want {
			md := rows[i].meta(t)
			require.Equal(t, w.topic, rows[i].Topic, "row %d: events are saved in emit order", i)
			require.Equal(t, "corr-1", md[outbox.MetadataCorrelationID])
			require.Equal(t, w.causation, md[outbox.MetadataCausationID], "row %d", i)
			require.Equal(t, w.command, md[outbox.MetadataCommand], "row %d", i)
		}

		// One commit, one notification, with all the records.
		require.Len(t, nf.commits, 1)
		require.Equal(t, outer.ID, nf.commits[0].Command.ID)
		require.Len(t, nf.commits[0].Records, 3)
		for i, r := range nf.commits[0].Records {
			require.Equal(t, rows[i].UUID, r.Message.UUID)
		}
	})
}

func TestNestedErrorSwallowedByCaller(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		var innerErr error
		nf := newNestedFixture(t, d, func(err error) error {
			innerErr = err
			return nil // the caller carries on without the stock reservation
		})
		require.NoError(t, nf.bus.Dispatch(context.Background(), PlaceOrder{OrderID: "bad-1", Amount: 3}))
		require.ErrorIs(t, innerErr, errOutOfStock)

		// The nested command's write and events were rolled back to its
		// savepoint; the caller's survive.
		require.Equal(t, int64(1), nf.orderCount(t, "id = ?", "bad-1"))
		require.Zero(t, nf.orderCount(t, "id = ?", "bad-1-stock"))
		rows := nf.outbox(t)
		require.Len(t, rows, 2)
		require.Equal(t, "OrderPlaced", rows[0].Topic)
		require.Equal(t, "OrderConfirmed", rows[1].Topic)
		require.Len(t, nf.commits, 1)
		require.Len(t, nf.commits[0].Records, 2)
	})
}

func TestNestedErrorAfterSuccessfulSibling(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d)
		err := f.run(context.Background(), func(ctx context.Context) error {
			require.NoError(t, insertOrder(ctx, "outer", 1))
			require.NoError(t, outbox.Emit(ctx, AuditLogged{Seq: 1}))
			// A first nested command succeeds, a second fails and is
			// swallowed, a third succeeds.
			require.NoError(t, f.run(ctx, func(ctx context.Context) error {
				require.NoError(t, insertOrder(ctx, "first", 1))
				return outbox.Emit(ctx, AuditLogged{Seq: 2})
			}))
			err := f.run(ctx, func(ctx context.Context) error {
				require.NoError(t, insertOrder(ctx, "second", 1))
				require.NoError(t, outbox.Emit(ctx, AuditLogged{Seq: 3}))
				// A third level, successful, inside the failing one.
				require.NoError(t, f.run(ctx, func(ctx context.Context) error {
					require.NoError(t, insertOrder(ctx, "second-child", 1))
					return outbox.Emit(ctx, AuditLogged{Seq: 4})
				}))
				return errOutOfStock
			})
			require.ErrorIs(t, err, errOutOfStock)
			require.NoError(t, f.run(ctx, func(ctx context.Context) error {
				require.NoError(t, insertOrder(ctx, "third", 1))
				return outbox.Emit(ctx, AuditLogged{Seq: 5})
			}))
			return outbox.Emit(ctx, AuditLogged{Seq: 6})
		})
		require.NoError(t, err)

		var ids []string
		require.NoError(t, f.db.Raw("SELECT id FROM orders ORDER BY id").Scan(&ids).Error)
		require.Equal(t, []string{"first", "outer", "third"}, ids)
		var seqs []string
		for _, r := range f.outbox(t) {
			seqs = append(seqs, string(r.Payload))
		}
		require.Equal(t, []string{`{"seq":1}`, `{"seq":2}`, `{"seq":5}`, `{"seq":6}`}, seqs)
	})
}

func TestNestedErrorReturnedByCaller(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		nf := newNestedFixture(t, d, func(err error) error { return err })
		err := nf.bus.Dispatch(context.Background(), PlaceOrder{OrderID: "bad-1", Amount: 3})
		require.ErrorIs(t, err, errOutOfStock)
		nf.requireNothingSaved(t)
		require.Empty(t, nf.commits)
	})
}

func TestJoinApplicationTransaction(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		for _, commit := range []bool{true, false} {
			t.Run(fmt.Sprintf("commit=%v", commit), func(t *testing.T) {
				nf := newNestedFixture(t, d, func(err error) error { return err })
				ctx := context.Background()

				tx := nf.db.WithContext(ctx).Begin()
				require.NoError(t, tx.Error)
				defer tx.Rollback()
				require.NoError(t, tx.Exec("INSERT INTO orders (id, amount) VALUES ('app', 0)").Error)

				appCtx := outbox.WithTx(ctx, tx)
				require.NoError(t, nf.bus.Dispatch(appCtx, PlaceOrder{OrderID: "o-1", Amount: 3}))
				// A failing command inside the application's transaction
				// rolls back to its savepoint; the transaction stays usable.
				require.ErrorIs(t, nf.bus.Dispatch(appCtx, PlaceOrder{OrderID: "bad-1"}), errOutOfStock)

				// Saved into the application's transaction: not visible yet.
				var n int64
				require.NoError(t, tx.Raw("SELECT count(*) FROM "+gormstore.DefaultTable).Scan(&n).Error)
				require.Equal(t, int64(3), n)
				require.Zero(t, nf.outboxCount(t), "events visible before the application committed")

				if !commit {
					require.NoError(t, tx.Rollback().Error)
					nf.requireNothingSaved(t)
					return
				}
				require.NoError(t, tx.Commit().Error)
				rows := nf.outbox(t)
				require.Len(t, rows, 3)
				require.Equal(t, "OrderPlaced", rows[0].Topic)
				require.Equal(t, "StockReserved", rows[1].Topic)
				require.Equal(t, "OrderConfirmed", rows[2].Topic)
				var ids []string
				require.NoError(t, nf.db.Raw("SELECT id FROM orders ORDER BY id").Scan(&ids).Error)
				require.Equal(t, []string{"app", "o-1", "o-1-stock"}, ids)
				// The application commits, not Transactional: AfterCommit
				// is not called for commands that joined its transaction.
				require.Empty(t, nf.commits)
			})
		}
	})
}

// The design notes a trap: with PrepareStmt the transaction's ConnPool is a
// *gorm.PreparedStmtTX, not a *sql.Tx. Commands, nesting and the outbox
// write must work the same.
func TestPreparedStatementsSession(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		db := testdb.Open(t, d).Session(&gorm.Session{PrepareStmt: true})
		f := newFixtureOn(t, d, db)
		for i := range 3 {
			require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
				require.NoError(t, insertOrder(ctx, fmt.Sprint("o-", i), i))
				require.NoError(t, outbox.Emit(ctx, AuditLogged{Seq: i}))
				err := f.run(ctx, func(ctx context.Context) error {
					require.NoError(t, insertOrder(ctx, fmt.Sprint("inner-", i), i))
					require.NoError(t, outbox.Emit(ctx, OrderShipped{OrderID: "inner"}))
					return errOutOfStock
				})
				require.ErrorIs(t, err, errOutOfStock)
				return outbox.Emit(ctx, AuditLogged{Seq: 10 + i})
			}))
		}
		require.Equal(t, int64(3), f.orderCount(t, ""))
		require.Equal(t, int64(6), f.outboxCount(t))
		require.Zero(t, f.outboxCount(t)-testdb.Count(t, f.db, gormstore.DefaultTable, "topic = 'audit'"))
	})
}
