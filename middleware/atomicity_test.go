package middleware_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

func TestCommitSavesExactlyTheEmittedEvents(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d)
		var cmd outbox.Command
		require.NoError(t, bus.Register(f.bus, func(ctx context.Context, c PlaceOrder) error {
			cmd = commandOf(t, ctx)
			if err := insertOrder(ctx, c.OrderID, c.Amount); err != nil {
				return err
			}
			if err := outbox.Emit(ctx, OrderPlaced{OrderID: c.OrderID, Amount: c.Amount}); err != nil {
				return err
			}
			return outbox.Emit(ctx, OrderShipped{OrderID: c.OrderID}, AuditLogged{Seq: 7})
		}))

		ctx := outbox.WithCorrelationID(context.Background(), "req-42")
		before := time.Now().UTC()
		require.NoError(t, f.bus.Dispatch(ctx, PlaceOrder{OrderID: "o-1", Amount: 10}))

		require.Equal(t, int64(1), f.orderCount(t, "id = ? AND amount = ?", "o-1", 10))
		rows := f.outbox(t)
		require.Len(t, rows, 3)

		require.NotEmpty(t, cmd.ID)
		require.NotEqual(t, "req-42", cmd.ID)
		want := []struct {
			topic, key, payload, name string
		}{
			{"OrderPlaced", "o-1", `{"order_id":"o-1","amount":10}`, "OrderPlaced"},
			{"OrderShipped", "", `{"order_id":"o-1"}`, "OrderShipped"},
			{"audit", "", `{"seq":7}`, "AuditLogged"},
		}
		seen := map[string]bool{}
		for i, w := range want {
			r := rows[i]
			require.Equal(t, w.topic, r.Topic, "row %d", i)
			require.Equal(t, w.key, r.PartitionKey, "row %d", i)
			require.JSONEq(t, w.payload, string(r.Payload), "row %d", i)
			requireUUIDv7(t, r.UUID)
			require.False(t, seen[r.UUID], "duplicate UUID")
			seen[r.UUID] = true

			md := r.meta(t)
			require.Equal(t, w.name, md[outbox.MetadataName])
			require.Equal(t, "req-42", md[outbox.MetadataCorrelationID])
			require.Equal(t, cmd.ID, md[outbox.MetadataCausationID])
			require.Equal(t, "PlaceOrder", md[outbox.MetadataCommand])
			created, err := time.Parse(time.RFC3339Nano, md[outbox.MetadataCreatedAt])
			require.NoError(t, err)
			require.WithinDuration(t, before, created, time.Minute)
			if w.key != "" {
				require.Equal(t, w.key, md[outbox.MetadataPartitionKey])
			} else {
				require.NotContains(t, md, outbox.MetadataPartitionKey)
			}
		}
	})
}

func TestTopLevelCommandStartsItsOwnCorrelation(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d)
		var ids []string
		for i := range 2 {
			require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
				ids = append(ids, commandOf(t, ctx).ID)
				return outbox.Emit(ctx, AuditLogged{Seq: i})
			}))
		}
		rows := f.outbox(t)
		require.Len(t, rows, 2)
		require.NotEqual(t, ids[0], ids[1])
		for i, r := range rows {
			md := r.meta(t)
			require.Equal(t, ids[i], md[outbox.MetadataCorrelationID], "without WithCorrelationID the command ID is the correlation ID")
			require.Equal(t, ids[i], md[outbox.MetadataCausationID])
			require.Equal(t, "do", md[outbox.MetadataCommand])
		}
	})
}

func TestCommandWithoutEventsCommits(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d)
		require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
			return insertOrder(ctx, "o-1", 1)
		}))
		require.Equal(t, int64(1), f.orderCount(t, ""))
		require.Zero(t, f.outboxCount(t))
	})
}

func TestHandlerErrorRollsBack(t *testing.T) {
	t.Parallel()
	errRejected := errors.New("order rejected")
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d)
		var returned error
		err := f.run(context.Background(), func(ctx context.Context) error {
			require.NoError(t, insertOrder(ctx, "o-1", 1))
			require.NoError(t, outbox.Emit(ctx, OrderPlaced{OrderID: "o-1"}, AuditLogged{Seq: 1}))
			returned = fmt.Errorf("place o-1: %w", errRejected)
			return returned
		})
		require.ErrorIs(t, err, errRejected)
		require.True(t, err == returned, "the handler's error is returned unchanged, got %v", err) //nolint:errorlint // identity is the point
		f.requireNothingSaved(t)
	})
}

func TestPanicRollsBackAndIsReRaised(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d)
		require.PanicsWithValue(t, "boom", func() {
			_ = f.run(context.Background(), func(ctx context.Context) error {
				require.NoError(t, insertOrder(ctx, "o-1", 1))
				require.NoError(t, outbox.Emit(ctx, OrderPlaced{OrderID: "o-1"}))
				panic("boom")
			})
		})
		f.requireNothingSaved(t)

		// The panicking command's transaction is gone: the next command
		// takes the (SQLite: write) lock and commits.
		require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
			require.NoError(t, insertOrder(ctx, "o-2", 2))
			return outbox.Emit(ctx, OrderPlaced{OrderID: "o-2"})
		}))
		require.Equal(t, int64(1), f.outboxCount(t))
		require.Equal(t, int64(1), f.orderCount(t, "id = ?", "o-2"))
	})
}

func TestRecoverOutermostTurnsPanicIntoError(t *testing.T) {
	t.Parallel()
	errBoom := errors.New("boom")
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, withOuter(middleware.Recover()))

		err := f.run(context.Background(), func(ctx context.Context) error {
			require.NoError(t, insertOrder(ctx, "o-1", 1))
			require.NoError(t, outbox.Emit(ctx, OrderPlaced{OrderID: "o-1"}))
			panic(errBoom)
		})
		require.ErrorIs(t, err, middleware.ErrPanic)
		require.ErrorIs(t, err, errBoom, "an error panic value is unwrapped")
		var pe *middleware.PanicError
		require.ErrorAs(t, err, &pe)
		require.Equal(t, errBoom, pe.Value)
		require.Contains(t, string(pe.Stack), "atomicity_test.go", "the stack points at the panicking handler")
		require.Equal(t, "command handler panicked: boom", err.Error())
		f.requireNothingSaved(t)

		err = f.run(context.Background(), func(ctx context.Context) error { panic("text") })
		require.ErrorIs(t, err, middleware.ErrPanic)
		require.ErrorAs(t, err, &pe)
		require.Equal(t, "text", pe.Value)
		f.requireNothingSaved(t)
	})
}

// badEvent cannot be marshaled to JSON.
type badEvent struct {
	F func()
}

// noTopic resolves to an empty topic.
type noTopic struct{ ID string }

func (noTopic) Topic() string { return "" }

// blob is an event whose JSON is exactly 11+len(Data) bytes.
type blob struct{ Data string }

func TestBadInputFailsTheCommand(t *testing.T) {
	t.Parallel()
	const maxPayload = 64 // `{"Data":"…"}` with 53 characters is exactly 64 bytes
	cases := []struct {
		name   string
		emit   func(ctx context.Context) error
		want   error
		ignore bool // the handler ignores Emit's error
		detail string
	}{
		{name: "nil event ignored", ignore: true, want: outbox.ErrNilEvent,
			emit: func(ctx context.Context) error { return outbox.Emit(ctx, OrderShipped{OrderID: "x"}, nil) }},
		{name: "typed nil event ignored", ignore: true, want: outbox.ErrNilEvent,
			emit: func(ctx context.Context) error { return outbox.Emit(ctx, (*OrderPlaced)(nil)) }},
		{name: "nil event returned", want: outbox.ErrNilEvent,
			emit: func(ctx context.Context) error { return outbox.Emit(ctx, nil) }},
		{name: "unmarshalable", want: outbox.ErrMarshal, detail: "middleware_test.badEvent",
			emit: func(ctx context.Context) error { return outbox.Emit(ctx, OrderShipped{}, badEvent{F: func() {}}) }},
		{name: "empty topic", want: outbox.ErrEmptyTopic, detail: "middleware_test.noTopic",
			emit: func(ctx context.Context) error { return outbox.Emit(ctx, noTopic{ID: "x"}) }},
		{name: "payload too large", want: outbox.ErrPayloadTooLarge, detail: "65 bytes, limit is 64",
			emit: func(ctx context.Context) error { return outbox.Emit(ctx, blob{Data: strings.Repeat("x", 54)}) }},
	}
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, withConfig(func(c *middleware.TransactionalConfig) {
			c.Encoder = outbox.NewEncoder(outbox.EncoderConfig{MaxPayloadBytes: maxPayload})
		}))
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				err := f.run(context.Background(), func(ctx context.Context) error {
					require.NoError(t, insertOrder(ctx, fmt.Sprint("o-", i), i))
					require.NoError(t, outbox.Emit(ctx, AuditLogged{Seq: i}))
					err := tc.emit(ctx)
					if tc.ignore {
						require.ErrorIs(t, err, tc.want, "Emit itself reports the problem")
						return nil
					}
					return err
				})
				require.ErrorIs(t, err, tc.want)
				if tc.detail != "" {
					require.ErrorContains(t, err, tc.detail)
				}
				f.requireNothingSaved(t)
			})
		}

		// The payload limit is inclusive.
		require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
			return outbox.Emit(ctx, blob{Data: strings.Repeat("x", 53)})
		}))
		rows := f.outbox(t)
		require.Len(t, rows, 1)
		require.Len(t, rows[0].Payload, maxPayload)
	})
}

func TestEmitAndTxOutsideAHandler(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	require.ErrorIs(t, outbox.Emit(ctx, OrderPlaced{}), outbox.ErrNoTransaction)
	tx, err := outbox.Tx(ctx)
	require.ErrorIs(t, err, outbox.ErrNoTransaction)
	require.Nil(t, tx)

	// A context kept past the end of its command can no longer emit.
	f := newFixture(t, testdb.SQLite)
	var kept context.Context
	require.NoError(t, f.run(ctx, func(ctx context.Context) error {
		kept = ctx
		return nil
	}))
	require.ErrorIs(t, outbox.Emit(kept, OrderPlaced{OrderID: "late"}), outbox.ErrCollectorClosed)
	require.Zero(t, f.outboxCount(t))
}

func TestHandlerSeesItsTransaction(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d)
		require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
			tx, err := outbox.Tx(ctx)
			require.NoError(t, err)
			require.NoError(t, tx.Exec("INSERT INTO orders (id, amount) VALUES (?, ?)", "o-1", 5).Error)
			// The write is visible inside the transaction, not outside.
			var n int64
			require.NoError(t, tx.Raw("SELECT count(*) FROM orders").Scan(&n).Error)
			require.Equal(t, int64(1), n)
			require.Zero(t, f.orderCount(t, ""), "uncommitted row visible outside the transaction")
			return nil
		}))
		require.Equal(t, int64(1), f.orderCount(t, ""))
	})
}

func TestContextCancelledDuringHandler(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		t.Run("handler returns ctx error", func(t *testing.T) {
			f := newFixture(t, d)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			started := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				done <- f.run(ctx, func(ctx context.Context) error {
					if err := insertOrder(ctx, "o-1", 1); err != nil {
						return err
					}
					if err := outbox.Emit(ctx, OrderPlaced{OrderID: "o-1"}); err != nil {
						return err
					}
					close(started)
					<-ctx.Done()
					return ctx.Err()
				})
			}()
			<-started
			cancel()
			err := <-done
			require.ErrorIs(t, err, context.Canceled)
			f.requireNothingSaved(t)
		})
		t.Run("handler ignores cancellation", func(t *testing.T) {
			f := newFixture(t, d)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			attempts := 0
			err := f.run(ctx, func(ctx context.Context) error {
				attempts++
				if err := insertOrder(ctx, "o-1", 1); err != nil {
					return err
				}
				if err := outbox.Emit(ctx, OrderPlaced{OrderID: "o-1"}); err != nil {
					return err
				}
				cancel()
				return nil // the commit must not happen on a cancelled context
			})
			require.Error(t, err)
			require.True(t, errors.Is(err, context.Canceled) || errors.Is(err, sql.ErrTxDone), "got %v", err)
			require.Equal(t, 1, attempts)
			f.requireNothingSaved(t)
		})
		t.Run("handler without events ignores cancellation", func(t *testing.T) {
			f := newFixture(t, d)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			err := f.run(ctx, func(ctx context.Context) error {
				if err := insertOrder(ctx, "o-1", 1); err != nil {
					return err
				}
				cancel()
				return nil
			})
			require.True(t, errors.Is(err, context.Canceled) || errors.Is(err, sql.ErrTxDone), "got %v", err)
			f.requireNothingSaved(t)
		})
		t.Run("already cancelled", func(t *testing.T) {
			f := newFixture(t, d)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			ran := false
			err := f.run(ctx, func(ctx context.Context) error {
				ran = true
				return nil
			})
			require.ErrorIs(t, err, context.Canceled)
			require.False(t, ran, "no handler runs on a cancelled context")
		})
	})
}
