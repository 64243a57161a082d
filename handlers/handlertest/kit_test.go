package handlertest_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/handlers/handlertest"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

func TestDatabaseMode(t *testing.T) {
	t.Parallel()
	for _, d := range testdb.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			db := openDB(t, d)

			t.Run("kit", func(t *testing.T) {
				k := handlertest.New(t, handlertest.Config{DB: db})
				rec := handlertest.Call(k, placeOrder, PlaceOrder{OrderID: "o-1", Amount: 3})
				require.NoError(t, rec.Err())
				handlertest.EmittedNames(t, rec, "OrderPlaced", "AuditLogged")
				require.Equal(t, []OrderPlaced{{OrderID: "o-1", Amount: 3}}, handlertest.Emitted[OrderPlaced](t, rec))
				require.Equal(t, []AuditLogged{{What: "placed o-1"}}, handlertest.Emitted[AuditLogged](t, rec))
				require.Equal(t, 2, rec.Len())

				recs := rec.Records()
				require.Equal(t, "OrderPlaced", recs[0].Topic)
				require.Equal(t, "order-o-1", recs[0].PartitionKey)
				require.Equal(t, "audit", recs[1].Topic)
				require.Empty(t, recs[1].PartitionKey)
				for _, r := range recs {
					require.Equal(t, uuid.Version(7), uuid.MustParse(r.Message.UUID).Version())
					require.Equal(t, "PlaceOrder", r.Message.Metadata.Get(outbox.MetadataCommand))
				}

				// The handler's writes and the outbox rows are in the test's
				// transaction, as the store wrote them.
				require.EqualValues(t, 1, testdb.Count(t, k.Tx(), "orders", "id = ?", "o-1"))
				require.EqualValues(t, 2, testdb.Count(t, k.Tx(), gormstore.DefaultTable, ""))
				var stored []string
				require.NoError(t, k.Tx().Raw("SELECT uuid FROM "+gormstore.DefaultTable+" ORDER BY id").Scan(&stored).Error)
				require.Equal(t, []string{recs[0].Message.UUID, recs[1].Message.UUID}, stored)

				// A second command in the same test sees the first one's
				// writes, and records only its own events.
				rec = handlertest.Call(k, placeOrder, PlaceOrder{OrderID: "o-2", Amount: 4})
				handlertest.EmittedNames(t, rec, "OrderPlaced", "AuditLogged")
				require.Equal(t, "o-2", handlertest.Emitted[OrderPlaced](t, rec)[0].OrderID)
				require.EqualValues(t, 2, testdb.Count(t, k.Tx(), "orders", ""))
			})

			// The test's transaction was rolled back when it ended.
			require.EqualValues(t, 0, testdb.Count(t, db, "orders", ""))
			require.EqualValues(t, 0, testdb.Count(t, db, gormstore.DefaultTable, ""))
		})
	}
}

// Two parallel tests on one PostgreSQL or MySQL database do not see each
// other's writes.
func TestParallelKitsAreIsolated(t *testing.T) {
	t.Parallel()
	for _, d := range []testdb.Dialect{testdb.Postgres, testdb.MySQL} {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			db := openDB(t, d)
			for _, id := range []string{"a", "b", "c"} {
				t.Run(id, func(t *testing.T) {
					t.Parallel()
					k := handlertest.New(t, handlertest.Config{DB: db})
					rec := handlertest.Call(k, placeOrder, PlaceOrder{OrderID: id, Amount: 1})
					handlertest.EmittedNames(t, rec, "OrderPlaced", "AuditLogged")
					require.EqualValues(t, 1, testdb.Count(t, k.Tx(), "orders", ""))
					require.EqualValues(t, 2, testdb.Count(t, k.Tx(), gormstore.DefaultTable, ""))
				})
			}
		})
	}
}

func TestHandlerErrorRollsBackToItsSavepoint(t *testing.T) {
	t.Parallel()
	errOutOfStock := errors.New("out of stock")
	eachMode(t, func(t *testing.T, db *gorm.DB) {
		k := handlertest.New(t, handlertest.Config{DB: db})
		failing := func(ctx context.Context, cmd PlaceOrder) error {
			if db != nil {
				if err := placeOrder(ctx, cmd); err != nil {
					return err
				}
			} else if err := outbox.Emit(ctx, OrderPlaced{OrderID: cmd.OrderID}); err != nil {
				return err
			}
			return errOutOfStock
		}
		if db != nil {
			handlertest.NoEvents(t, k.Run("Setup", func(ctx context.Context) error {
				tx, err := outbox.Tx(ctx)
				require.NoError(t, err)
				return tx.Exec("INSERT INTO orders (id, amount) VALUES ('before', 1)").Error
			}))
		}

		rec := handlertest.Call(k, failing, PlaceOrder{OrderID: "o-1", Amount: 1})
		require.Equal(t, errOutOfStock, rec.Err(), "the handler's error, unchanged")
		require.Zero(t, rec.Len())
		require.Empty(t, rec.Records())
		if db != nil {
			require.EqualValues(t, 0, testdb.Count(t, k.Tx(), "orders", "id = 'o-1'"), "rolled back to the savepoint")
			require.EqualValues(t, 1, testdb.Count(t, k.Tx(), "orders", "id = 'before'"), "earlier work stays")
			require.EqualValues(t, 0, testdb.Count(t, k.Tx(), gormstore.DefaultTable, ""))
		}

		// Every assertion fails on a failed command, quoting its error.
		for _, assert := range []func(tb testing.TB){
			func(tb testing.TB) { handlertest.Emitted[OrderPlaced](tb, rec) },
			func(tb testing.TB) { handlertest.NoEvents(tb, rec) },
			func(tb testing.TB) { handlertest.EmittedNames(tb, rec) },
		} {
			requireFailed(t, runInner(t, assert), "handlertest: the command failed, so it emitted nothing:\n\tout of stock")
		}
	})
}

// The application's own bus, with its production middleware, runs inside
// the kit: its Transactional joins the kit's command and its events,
// nested commands' included, are recorded.
func TestDispatchWholeBus(t *testing.T) {
	t.Parallel()
	for _, d := range testdb.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			db := openDB(t, d)
			store, err := gormstore.New(db, gormstore.Config{})
			require.NoError(t, err)
			tm, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: store})
			require.NoError(t, err)
			b := bus.New(middleware.Recover(), tm.Middleware())
			errNoStock := errors.New("no stock")
			require.NoError(t, bus.Register(b, func(ctx context.Context, cmd PlaceOrder) error {
				if err := placeOrder(ctx, cmd); err != nil {
					return err
				}
				err := b.Dispatch(ctx, ReserveStock{OrderID: cmd.OrderID})
				if errors.Is(err, errNoStock) {
					return outbox.Emit(ctx, OrderCancelled{OrderID: cmd.OrderID})
				}
				return err
			}))
			require.NoError(t, bus.Register(b, func(ctx context.Context, cmd ReserveStock) error {
				if err := outbox.Emit(ctx, StockReserved{OrderID: cmd.OrderID}); err != nil {
					return err
				}
				if cmd.OrderID == "none-left" {
					return errNoStock
				}
				return nil
			}))

			k := handlertest.New(t, handlertest.Config{DB: db})
			rec := k.Dispatch(b, PlaceOrder{OrderID: "o-1", Amount: 2})
			handlertest.EmittedNames(t, rec, "OrderPlaced", "AuditLogged", "StockReserved")
			recs := rec.Records()
			require.Equal(t, "PlaceOrder", recs[0].Message.Metadata.Get(outbox.MetadataCommand))
			require.Equal(t, "ReserveStock", recs[2].Message.Metadata.Get(outbox.MetadataCommand))
			require.Equal(t, recs[0].Message.Metadata.Get(outbox.MetadataCorrelationID), recs[2].Message.Metadata.Get(outbox.MetadataCorrelationID))
			require.EqualValues(t, 3, testdb.Count(t, k.Tx(), gormstore.DefaultTable, ""))

			// The nested command fails and the caller handles it: its event
			// is gone, the caller's stay.
			rec = k.Dispatch(b, PlaceOrder{OrderID: "none-left", Amount: 1})
			handlertest.EmittedNames(t, rec, "OrderPlaced", "AuditLogged", "OrderCancelled")

			// A bus error (no handler) is the command's error.
			rec = k.Dispatch(b, OrderPlaced{})
			require.ErrorIs(t, rec.Err(), bus.ErrNoHandler)
		})
	}
}

func TestNoDatabaseMode(t *testing.T) {
	t.Parallel()
	k := handlertest.New(t, handlertest.Config{})
	pure := func(ctx context.Context, cmd PlaceOrder) error {
		return outbox.Emit(ctx, OrderPlaced{OrderID: cmd.OrderID, Amount: cmd.Amount}, &AuditLogged{What: "placed"})
	}
	rec := handlertest.Call(k, pure, PlaceOrder{OrderID: "o-1", Amount: 5})
	handlertest.EmittedNames(t, rec, "OrderPlaced", "AuditLogged")
	require.Equal(t, []OrderPlaced{{OrderID: "o-1", Amount: 5}}, handlertest.Emitted[OrderPlaced](t, rec))
	require.Equal(t, []*AuditLogged{{What: "placed"}}, handlertest.Emitted[*AuditLogged](t, rec), "decodes into pointers too")
	recs := rec.Records()
	require.Equal(t, "order-o-1", recs[0].PartitionKey)
	require.Equal(t, "audit", recs[1].Topic)
	require.Equal(t, recs[0].Message.Metadata.Get(outbox.MetadataCorrelationID), recs[1].Message.Metadata.Get(outbox.MetadataCorrelationID))

	// A handler that needs the database fails with a hint.
	rec = handlertest.Call(k, placeOrder, PlaceOrder{OrderID: "o-2"})
	require.ErrorIs(t, rec.Err(), outbox.ErrNoTransaction)
	requireFailed(t, runInner(t, func(tb testing.TB) { handlertest.NoEvents(tb, rec) }),
		"outbox: no transactional handler in context", "set handlertest.Config.DB")
	requireFailed(t, runInner(t, func(tb testing.TB) { handlertest.New(tb, handlertest.Config{}).Tx() }),
		"handlertest: Tx needs a database (set handlertest.Config.DB)")

	// An Emit error the handler ignores still fails the command.
	rec = handlertest.Call(k, func(ctx context.Context, _ PlaceOrder) error {
		_ = outbox.Emit(ctx, nil)
		return nil
	}, PlaceOrder{})
	require.ErrorIs(t, rec.Err(), outbox.ErrNilEvent)

	// The production bus without Transactional works too.
	b := bus.New()
	require.NoError(t, bus.Register(b, handlers.Returning(func(_ context.Context, cmd PlaceOrder) ([]any, error) {
		return []any{OrderPlaced{OrderID: cmd.OrderID}}, nil
	})))
	rec = k.Dispatch(b, PlaceOrder{OrderID: "o-3"})
	require.Equal(t, "o-3", handlertest.Emitted[OrderPlaced](t, rec)[0].OrderID)
	require.Equal(t, "PlaceOrder", rec.Records()[0].Message.Metadata.Get(outbox.MetadataCommand))
}

// The kit encodes with the encoder it is given, as production would.
func TestKitUsesTheGivenEncoder(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{
		Topic:           func(name string, _ any) string { return "shop." + name },
		MaxPayloadBytes: 64,
	})
	eachMode(t, func(t *testing.T, db *gorm.DB) {
		k := handlertest.New(t, handlertest.Config{DB: db, Encoder: enc})
		rec := k.Run("Emit", func(ctx context.Context) error {
			return outbox.Emit(ctx, OrderCancelled{OrderID: "o-1"})
		})
		require.Equal(t, "shop.OrderCancelled", rec.Records()[0].Topic)

		rec = k.Run("Emit", func(ctx context.Context) error {
			return outbox.Emit(ctx, OrderCancelled{OrderID: string(make([]byte, 100))})
		})
		require.ErrorIs(t, rec.Err(), outbox.ErrPayloadTooLarge)
	})
}

func TestKitBadInput(t *testing.T) {
	t.Parallel()
	k := handlertest.New(t, handlertest.Config{})
	requireFailed(t, runInner(t, func(tb testing.TB) { handlertest.NoEvents(tb, nil) }), "nil *Recording")
	requireFailed(t, runInner(t, func(tb testing.TB) {
		handlertest.NoEvents(tb, handlertest.New(tb, handlertest.Config{}).Run("x", nil))
	}), `Run("x") with a nil function`)
	requireFailed(t, runInner(t, func(tb testing.TB) {
		handlertest.Call[PlaceOrder](handlertest.New(tb, handlertest.Config{}), nil, PlaceOrder{})
	}), "Call with a nil handler")
	requireFailed(t, runInner(t, func(tb testing.TB) {
		handlertest.New(tb, handlertest.Config{}).Dispatch(nil, PlaceOrder{})
	}), "Dispatch on a nil bus")
	requireFailed(t, runInner(t, func(tb testing.TB) {
		handlertest.Emitted[error](tb, k.Run("x", func(context.Context) error { return nil }))
	}), "Emitted[error]", "interface")
	requireFailed(t, runInner(t, func(tb testing.TB) {
		handlertest.New(tb, handlertest.Config{DB: &gorm.DB{}})
	}), "handlertest: gormstore: invalid config")
	require.Nil(t, k.Context().Value(struct{}{}))
	_, err := outbox.Tx(k.Context())
	require.ErrorIs(t, err, outbox.ErrNoTransaction, "no transaction without a database")
}
