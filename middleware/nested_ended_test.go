package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
)

// TestNestedCommandThatEndsTheTransaction: a nested command fails after
// the transaction ended (here it runs ROLLBACK itself), so its savepoint
// is gone with the caller's writes. The caller ignores the error and goes
// on: its later statements fail instead of running in autocommit mode,
// and the command fails instead of committing half of its work. It runs on
// MySQL, whose GORM dialector reports a failed ROLLBACK TO SAVEPOINT; the
// PostgreSQL and SQLite dialectors discard that error.
func TestNestedCommandThatEndsTheTransaction(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.MySQL)
	var innerErr, afterErr error
	err := f.run(context.Background(), func(ctx context.Context) error {
		require.NoError(t, insertOrder(ctx, "before", 1))
		require.NoError(t, outbox.Emit(ctx, AuditLogged{Seq: 1}))
		innerErr = f.run(ctx, func(ctx context.Context) error {
			tx, err := outbox.Tx(ctx)
			require.NoError(t, err)
			require.NoError(t, tx.Exec("ROLLBACK").Error)
			return errOutOfStock
		})
		afterErr = insertOrder(ctx, "after", 2)
		return outbox.Emit(ctx, AuditLogged{Seq: 2})
	})
	require.ErrorIs(t, innerErr, errOutOfStock)
	require.Error(t, afterErr, "a statement after the transaction ended ran")
	require.ErrorIs(t, err, errOutOfStock)
	require.ErrorContains(t, err, "the transaction ended")
	f.requireNothingSaved(t)
}

// probeNested and probeWriter are the commands of the nested deadlock test.
type (
	probeNested struct{}
	probeWriter struct{}
)

// TestNestedDeadlockVictimRerunsTheCommand: on MySQL a deadlock ends the
// victim's whole transaction, savepoints included. When the victim is a
// nested command whose caller ignores its error, the top-level command is
// run again from the start, as after any deadlock, and commits all of its
// work once.
func TestNestedDeadlockVictimRerunsTheCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.MySQL)
	for _, q := range accountsSetup {
		require.NoError(t, f.db.Exec(q).Error)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	both := newBarrier(2)
	var nestedRuns, topRuns, writerRuns atomic.Int32
	update := func(ctx context.Context, id string) error {
		tx, err := outbox.Tx(ctx)
		if err != nil {
			return err
		}
		return tx.Exec("UPDATE accounts SET balance = balance + 1 WHERE id = ?", id).Error
	}
	// The nested command updates x, then y; the writer y, then x. The
	// writer has inserted many rows first, so InnoDB picks the nested
	// command's transaction, the smaller one, as the victim.
	require.NoError(t, bus.Register(f.bus, func(hctx context.Context, _ probeNested) error {
		if err := update(hctx, "x"); err != nil {
			return err
		}
		if nestedRuns.Add(1) == 1 {
			if err := both.wait(ctx); err != nil {
				return err
			}
		}
		return update(hctx, "y")
	}))
	require.NoError(t, bus.Register(f.bus, func(hctx context.Context, _ probeWriter) error {
		writerRuns.Add(1)
		for i := range 200 {
			if err := insertOrder(hctx, fmt.Sprint("w-", i), 1); err != nil {
				return err
			}
		}
		if err := update(hctx, "y"); err != nil {
			return err
		}
		if err := both.wait(ctx); err != nil {
			return err
		}
		return update(hctx, "x")
	}))

	writerErr := make(chan error, 1)
	go func() { writerErr <- f.bus.Dispatch(context.Background(), probeWriter{}) }()
	var nestedErrs []error
	err := f.run(context.Background(), func(ctx context.Context) error {
		topRuns.Add(1)
		if err := insertOrder(ctx, "before", 1); err != nil {
			return err
		}
		nestedErrs = append(nestedErrs, f.bus.Dispatch(ctx, probeNested{}))
		if err := insertOrder(ctx, "after", 1); err != nil {
			return err
		}
		return outbox.Emit(ctx, AuditLogged{Seq: 1})
	})
	require.NoError(t, err)
	require.NoError(t, <-writerErr)

	require.Equal(t, int32(1), writerRuns.Load(), "the writer was not the victim")
	require.Equal(t, int32(2), topRuns.Load(), "the command was run again")
	require.Len(t, nestedErrs, 2)
	require.True(t, isConflict(testdb.MySQL, nestedErrs[0]), "the nested command lost a deadlock, got %v", nestedErrs[0])
	var joined interface{ Unwrap() []error }
	require.True(t, errors.As(nestedErrs[0], &joined), "the savepoint's rollback failed too: %v", nestedErrs[0])
	require.NoError(t, nestedErrs[1])

	require.Equal(t, int64(1), f.orderCount(t, "id = 'before'"))
	require.Equal(t, int64(1), f.orderCount(t, "id = 'after'"))
	var balances []int
	require.NoError(t, f.db.Raw("SELECT balance FROM accounts ORDER BY id").Scan(&balances).Error)
	require.Equal(t, []int{2, 2}, balances, "each command's updates committed once")
	rows := f.outbox(t)
	require.Len(t, rows, 1)
	require.JSONEq(t, `{"seq":1}`, string(rows[0].Payload))
}
