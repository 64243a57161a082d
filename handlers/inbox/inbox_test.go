package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// effectsDDL is the consumer's business table. It has no unique constraint,
// so a handler that ran twice leaves two rows.
const effectsDDL = `CREATE TABLE effects (
	consumer     TEXT NOT NULL,
	message_uuid TEXT NOT NULL
)`

type fixture struct {
	dialect testdb.Dialect
	db      *gorm.DB
	in      *inbox.Inbox
}

func newFixture(t *testing.T, d testdb.Dialect, cfg inbox.Config) *fixture {
	t.Helper()
	db := testdb.Open(t, d)
	in, err := inbox.New(db, cfg)
	require.NoError(t, err)
	require.NoError(t, in.Migrate(context.Background()))
	require.NoError(t, db.Exec(effectsDDL).Error)
	return &fixture{dialect: d, db: db, in: in}
}

// eachDialect runs f as a parallel subtest per database the inbox
// supports.
func eachDialect(t *testing.T, f func(t *testing.T, d testdb.Dialect)) {
	t.Helper()
	for _, d := range testdb.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			f(t, d)
		})
	}
}

// quoteIdent quotes name for d: with backticks on MySQL, which reads a
// double-quoted name as a string.
func quoteIdent(d testdb.Dialect, name string) string {
	if d == testdb.MySQL {
		return "`" + name + "`"
	}
	return `"` + name + `"`
}

// timeArg returns t as a statement argument for a time column of d: the
// fixed-width UTC text SQLite stores, t itself elsewhere (the MySQL test
// DSN writes times in UTC).
func timeArg(d testdb.Dialect, t time.Time) any {
	if d == testdb.SQLite {
		return t.UTC().Format("2006-01-02T15:04:05.000000000Z")
	}
	return t.UTC()
}

// writeEffect is the handlers' business write, in the inbox transaction.
func writeEffect(ctx context.Context, consumer, uuid string) error {
	tx, err := outbox.Tx(ctx)
	if err != nil {
		return err
	}
	return tx.Exec("INSERT INTO effects (consumer, message_uuid) VALUES (?, ?)", consumer, uuid).Error
}

func (f *fixture) effects(t *testing.T, uuid string) int64 {
	t.Helper()
	return testdb.Count(t, f.db, "effects", "message_uuid = ?", uuid)
}

func (f *fixture) inboxRows(t *testing.T, uuid string) int64 {
	t.Helper()
	return testdb.Count(t, f.db, f.in.Table(), "message_uuid = ?", uuid)
}

func TestProcessSameMessageThreeTimesRunsOnce(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		ctx := context.Background()
		id := outbox.NewUUID()
		var calls int
		var dups []bool
		for range 3 {
			dup, err := f.in.Process(ctx, "billing", id, func(ctx context.Context) error {
				calls++
				return writeEffect(ctx, "billing", id)
			})
			require.NoError(t, err)
			dups = append(dups, dup)
		}
		require.Equal(t, []bool{false, true, true}, dups)
		require.Equal(t, 1, calls)
		require.EqualValues(t, 1, f.effects(t, id))
		require.EqualValues(t, 1, f.inboxRows(t, id))
	})
}

func TestMiddlewareSameMessageThreeTimesRunsOnce(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		var calls atomic.Int32
		h := f.in.Middleware("billing")(func(msg *message.Message) ([]*message.Message, error) {
			calls.Add(1)
			return []*message.Message{message.NewMessage("out-"+msg.UUID, nil)}, writeEffect(msg.Context(), "billing", msg.UUID)
		})
		id := outbox.NewUUID()
		for i := range 3 {
			// Each delivery is a new message value with the same UUID, as a
			// broker hands it over again.
			out, err := h(message.NewMessage(id, []byte(`{}`)))
			require.NoError(t, err)
			if i == 0 {
				require.Len(t, out, 1, "the first delivery returns the handler's messages")
			} else {
				require.Nil(t, out, "a duplicate is acked with nothing to publish")
			}
		}
		require.EqualValues(t, 1, calls.Load())
		require.EqualValues(t, 1, f.effects(t, id))
		require.EqualValues(t, 1, f.inboxRows(t, id))
	})
}

// The consumer commits its work, then crashes before acking: the broker
// redelivers the message, and the redelivery is acked without a second
// effect.
func TestCrashAfterCommitBeforeAck(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		var calls atomic.Int32
		handler := func(msg *message.Message) ([]*message.Message, error) {
			calls.Add(1)
			return nil, writeEffect(msg.Context(), "shipping", msg.UUID)
		}
		id := outbox.NewUUID()

		// First process: runs the middleware to completion (the commit
		// happened), then "crashes": the message is never acked.
		first := message.NewMessage(id, []byte(`{"order":"o-1"}`))
		_, err := f.in.Middleware("shipping")(handler)(first)
		require.NoError(t, err)
		require.EqualValues(t, 1, f.effects(t, id))

		// A new process (new Inbox value, new middleware chain) gets the
		// redelivered message.
		restarted, err := inbox.New(f.db, inbox.Config{})
		require.NoError(t, err)
		redelivered := message.NewMessage(id, []byte(`{"order":"o-1"}`))
		out, err := restarted.Middleware("shipping")(handler)(redelivered)
		require.NoError(t, err, "the redelivery is acked")
		require.Nil(t, out)
		require.EqualValues(t, 1, calls.Load(), "the handler did not run again")
		require.EqualValues(t, 1, f.effects(t, id))
	})
}

func TestHandlerErrorRecordsNothingAndIsReturned(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		id := outbox.NewUUID()
		errCharge := errors.New("payment provider down")
		fail := true
		h := f.in.Middleware("billing")(func(msg *message.Message) ([]*message.Message, error) {
			// The write happens, then the handler fails: it must not stay.
			if err := writeEffect(msg.Context(), "billing", msg.UUID); err != nil {
				return nil, err
			}
			if fail {
				return []*message.Message{message.NewMessage("out", nil)}, errCharge
			}
			return nil, nil
		})

		out, err := h(message.NewMessage(id, nil))
		require.Equal(t, errCharge, err, "the handler's error, unchanged")
		require.Nil(t, out)
		require.EqualValues(t, 0, f.effects(t, id), "the handler's write is rolled back")
		require.EqualValues(t, 0, f.inboxRows(t, id), "the message is not recorded")

		// The broker redelivers the nacked message; now it is processed.
		fail = false
		_, err = h(message.NewMessage(id, nil))
		require.NoError(t, err)
		require.EqualValues(t, 1, f.effects(t, id))
		require.EqualValues(t, 1, f.inboxRows(t, id))
	})
}

// Two consumers (instances of one logical consumer) receive the same
// message at the same moment. Both start their transaction together; the
// winner holds its transaction open while the other's insert waits on the
// primary key, then finds the row.
func TestConcurrentDeliveriesRunOnce(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		const messages = 10
		const instances = 2
		const hold = 50 * time.Millisecond
		for m := range messages {
			id := outbox.NewUUID()
			var (
				calls     atomic.Int32
				start     sync.WaitGroup
				done      sync.WaitGroup
				mu        sync.Mutex
				winnerEnd time.Time
				dupEnds   []time.Time
				errs      = make(chan error, instances)
			)
			start.Add(instances)
			for range instances {
				done.Add(1)
				go func() {
					defer done.Done()
					ran := false
					h := f.in.Middleware("billing")(func(msg *message.Message) ([]*message.Message, error) {
						ran = true
						calls.Add(1)
						if err := writeEffect(msg.Context(), "billing", msg.UUID); err != nil {
							return nil, err
						}
						time.Sleep(hold) // keep the transaction open
						mu.Lock()
						winnerEnd = time.Now()
						mu.Unlock()
						return nil, nil
					})
					start.Done()
					start.Wait() // barrier: all instances go at once
					_, err := h(message.NewMessage(id, nil))
					if err == nil && !ran {
						mu.Lock()
						dupEnds = append(dupEnds, time.Now())
						mu.Unlock()
					}
					errs <- err
				}()
			}
			done.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err, "message %d", m)
			}
			require.EqualValues(t, 1, calls.Load(), "message %d: one handler run", m)
			require.EqualValues(t, 1, f.effects(t, id), "message %d: one effect", m)
			// Every other instance returned after the winner's handler
			// finished: it waited for the winner's transaction.
			require.Len(t, dupEnds, instances-1, "message %d", m)
			for _, end := range dupEnds {
				require.False(t, end.Before(winnerEnd), "message %d: an instance returned before the winner's handler finished", m)
			}
		}
	})
}

func TestConsumersAreIndependent(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		ctx := context.Background()
		id := outbox.NewUUID()
		for _, consumer := range []string{"billing", "shipping", "billing", "shipping"} {
			_, err := f.in.Process(ctx, consumer, id, func(ctx context.Context) error {
				return writeEffect(ctx, consumer, id)
			})
			require.NoError(t, err)
		}
		require.EqualValues(t, 1, testdb.Count(t, f.db, "effects", "consumer = ? AND message_uuid = ?", "billing", id))
		require.EqualValues(t, 1, testdb.Count(t, f.db, "effects", "consumer = ? AND message_uuid = ?", "shipping", id))
	})
}

// Consumers and UUIDs compare byte for byte: no case folding, and no
// padding (MySQL's utf8mb4_bin takes 'm' and 'm ' for one).
func TestKeysCompareExactly(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		ctx := context.Background()
		nop := func(context.Context) error { return nil }
		for i, want := range []bool{false, true} {
			for _, consumer := range []string{"c", "c ", "C"} {
				for _, id := range []string{"m", "m ", "M", "é", "e\u0301"} {
					dup, err := f.in.Process(ctx, consumer, id, nop)
					require.NoError(t, err)
					require.Equal(t, want, dup, "pass %d, consumer %q, message %q", i, consumer, id)
				}
			}
		}
		require.EqualValues(t, 15, testdb.Count(t, f.db, f.in.Table(), ""))
	})
}

func TestMiddlewareContext(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		type key struct{}
		orig := context.WithValue(context.Background(), key{}, "router")
		msg := message.NewMessage(outbox.NewUUID(), nil)
		msg.SetContext(orig)
		_, err := f.in.Middleware("billing")(func(msg *message.Message) ([]*message.Message, error) {
			_, err := outbox.Tx(msg.Context())
			require.NoError(t, err, "the handler reaches the inbox transaction")
			require.Equal(t, "router", msg.Context().Value(key{}), "and keeps the router's context values")
			return nil, nil
		})(msg)
		require.NoError(t, err)
		require.Equal(t, orig, msg.Context(), "the original context is restored")
		_, err = outbox.Tx(msg.Context())
		require.ErrorIs(t, err, outbox.ErrNoTransaction, "no finished transaction leaks out (a retry middleware calls again)")
	})
}

func TestInvalidMessages(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.SQLite, inbox.Config{})
	ctx := context.Background()
	called := false
	fn := func(context.Context) error { called = true; return nil }

	_, err := f.in.Process(ctx, "", "id-1", fn)
	require.ErrorIs(t, err, inbox.ErrNoConsumer)
	_, err = f.in.Process(ctx, "billing", "", fn)
	require.ErrorIs(t, err, inbox.ErrNoMessageUUID)
	_, err = f.in.Process(ctx, "billing", "id-1", nil)
	require.ErrorIs(t, err, inbox.ErrInvalidConfig)

	h := func(*message.Message) ([]*message.Message, error) { called = true; return nil, nil }
	_, err = f.in.Middleware("billing")(h)(message.NewMessage("", nil))
	require.ErrorIs(t, err, inbox.ErrNoMessageUUID)
	// Outside a router there is no handler name to fall back on.
	_, err = f.in.Middleware("")(h)(message.NewMessage("id-2", nil))
	require.ErrorIs(t, err, inbox.ErrNoConsumer)
	require.False(t, called)
	require.EqualValues(t, 0, testdb.Count(t, f.db, f.in.Table(), ""))
}

// Process joins a transaction the caller put in the context: the inbox row
// commits or rolls back with it.
func TestProcessJoinsCallerTransaction(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		for _, commit := range []bool{true, false} {
			id := outbox.NewUUID()
			errRollback := errors.New("caller rolls back")
			err := f.db.Transaction(func(tx *gorm.DB) error {
				ctx := outbox.WithTx(context.Background(), tx)
				dup, err := f.in.Process(ctx, "billing", id, func(ctx context.Context) error {
					inner, err := outbox.Tx(ctx)
					require.NoError(t, err)
					require.Equal(t, tx.Statement.ConnPool, inner.Statement.ConnPool, "same transaction")
					return writeEffect(ctx, "billing", id)
				})
				require.NoError(t, err)
				require.False(t, dup)
				if !commit {
					return errRollback
				}
				return nil
			})
			want := int64(0)
			if commit {
				require.NoError(t, err)
				want = 1
			} else {
				require.ErrorIs(t, err, errRollback)
			}
			require.Equal(t, want, f.inboxRows(t, id), "commit=%v", commit)
			require.Equal(t, want, f.effects(t, id), "commit=%v", commit)
		}
	})
}

func TestCleanup(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		var now atomic.Pointer[time.Time]
		set := func(tm time.Time) { now.Store(&tm) }
		base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
		f := newFixture(t, d, inbox.Config{Now: func() time.Time { return *now.Load() }})
		ctx := context.Background()
		nop := func(context.Context) error { return nil }

		// 7 rows received 2h to 1h1m ago, 3 rows received 59m ago and later,
		// with sub-second times to check ordering at the edges.
		var old, young []string
		for i := range 7 {
			set(base.Add(-2*time.Hour + time.Duration(i)*9*time.Minute + time.Duration(i)*time.Millisecond))
			id := fmt.Sprintf("old-%d", i)
			_, err := f.in.Process(ctx, "c", id, nop)
			require.NoError(t, err)
			old = append(old, id)
		}
		for i := range 3 {
			set(base.Add(-59*time.Minute + time.Duration(i)*time.Minute + 123456789))
			id := fmt.Sprintf("young-%d", i)
			_, err := f.in.Process(ctx, "c", id, nop)
			require.NoError(t, err)
			young = append(young, id)
		}
		set(base)

		n, err := f.in.Cleanup(ctx, time.Hour, 2)
		require.NoError(t, err)
		require.EqualValues(t, len(old), n)
		for _, id := range old {
			require.EqualValues(t, 0, f.inboxRows(t, id), id)
		}
		for _, id := range young {
			require.EqualValues(t, 1, f.inboxRows(t, id), id)
		}

		// Nothing left to delete; the default batch.
		n, err = f.in.Cleanup(ctx, time.Hour, 0)
		require.NoError(t, err)
		require.Zero(t, n)

		// A deleted row no longer deduplicates: this is why the retention
		// must outlast every redelivery.
		dup, err := f.in.Process(ctx, "c", old[0], nop)
		require.NoError(t, err)
		require.False(t, dup)

		_, err = f.in.Cleanup(ctx, 0, 10)
		require.ErrorIs(t, err, inbox.ErrInvalidConfig)
		_, err = f.in.Cleanup(ctx, time.Hour, -1)
		require.ErrorIs(t, err, inbox.ErrInvalidConfig)
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		_, err = f.in.Cleanup(cancelled, time.Minute, 1)
		require.ErrorIs(t, err, context.Canceled)
	})
}
