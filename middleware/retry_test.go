package middleware_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

// barrier releases every waiter once n goroutines have arrived.
type barrier struct {
	mu      sync.Mutex
	n       int
	arrived int
	ch      chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, ch: make(chan struct{})} }

func (b *barrier) wait(ctx context.Context) error {
	b.mu.Lock()
	b.arrived++
	if b.arrived == b.n {
		close(b.ch)
	}
	b.mu.Unlock()
	select {
	case <-b.ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("barrier: %d of %d arrived: %w", b.arrived, b.n, ctx.Err())
	}
}

// Attempted is emitted by the conflicting commands: which command, in
// which attempt, and what it decided.
type Attempted struct {
	Command string `json:"command"`
	Attempt int32  `json:"attempt"`
	Outcome string `json:"outcome"`
}

// conflict is a command of the serialization tests.
type conflict struct{ Name string }

// conflictDialects are the databases whose concurrent transactions fail
// with an error the store calls retryable. SQLite lets one writer in at a
// time and has none.
var conflictDialects = []testdb.Dialect{testdb.Postgres, testdb.MySQL}

// isConflict reports whether err is the error dialect d fails one of two
// conflicting transactions with: at SERIALIZABLE, PostgreSQL's
// serialization failure (SQLSTATE 40001) or deadlock (40P01); on MySQL an
// InnoDB deadlock (1213), which is how SERIALIZABLE's shared read locks end
// when both transactions then write.
func isConflict(d testdb.Dialect, err error) bool {
	switch d {
	case testdb.Postgres:
		var pgErr *pgconn.PgError
		return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01")
	case testdb.MySQL:
		var myErr *mysql.MySQLError
		return errors.As(err, &myErr) && myErr.Number == 1213
	}
	return false
}

// conflictFixture runs two conflicting commands, "a" and "b", at isolation
// level iso, with the store's Retryable. handler runs one attempt; it must
// call readDone after its first statements, which holds the first attempt
// of each command until both have run them, so their transactions overlap
// for certain.
type conflictFixture struct {
	*fixture
	attempts map[string]*atomic.Int32
	seen     chan error // errors given to Retryable
}

func newConflictFixture(t *testing.T, d testdb.Dialect, iso sql.IsolationLevel, maxRetries int, setup []string,
	handler func(ctx context.Context, name string, attempt int32, readDone func() error) (Attempted, error),
) *conflictFixture {
	t.Helper()
	sf := &conflictFixture{
		attempts: map[string]*atomic.Int32{"a": {}, "b": {}},
		seen:     make(chan error, 100),
	}
	sf.fixture = newFixture(t, d, withConfig(func(c *middleware.TransactionalConfig) {
		c.Isolation = iso
		c.MaxRetries = maxRetries
		c.Retryable = func(err error) bool {
			sf.seen <- err
			return sf.fixture.store.Retryable(err)
		}
	}))
	for _, q := range setup {
		require.NoError(t, sf.db.Exec(q).Error)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	both := newBarrier(2)
	require.NoError(t, bus.Register(sf.bus, func(hctx context.Context, c conflict) error {
		attempt := sf.attempts[c.Name].Add(1)
		readDone := func() error {
			if attempt > 1 {
				return nil // retries run alone
			}
			return both.wait(ctx)
		}
		ev, err := handler(hctx, c.Name, attempt, readDone)
		if err != nil {
			return err
		}
		ev.Command, ev.Attempt = c.Name, attempt
		return outbox.Emit(hctx, ev)
	}))
	return sf
}

func newSerializableFixture(t *testing.T, d testdb.Dialect, maxRetries int, setup []string,
	handler func(ctx context.Context, name string, attempt int32, readDone func() error) (Attempted, error),
) *conflictFixture {
	t.Helper()
	return newConflictFixture(t, d, sql.LevelSerializable, maxRetries, setup, handler)
}

// dispatchBoth dispatches "a" and "b" concurrently and returns their errors.
func (sf *conflictFixture) dispatchBoth() map[string]error {
	var mu sync.Mutex
	errs := map[string]error{}
	var wg sync.WaitGroup
	for _, name := range []string{"a", "b"} {
		wg.Go(func() {
			err := sf.bus.Dispatch(context.Background(), conflict{Name: name})
			mu.Lock()
			errs[name] = err
			mu.Unlock()
		})
	}
	wg.Wait()
	return errs
}

func (sf *conflictFixture) events(t *testing.T) map[string]Attempted {
	t.Helper()
	out := map[string]Attempted{}
	for _, r := range sf.outbox(t) {
		var ev Attempted
		require.NoError(t, json.Unmarshal(r.Payload, &ev))
		_, dup := out[ev.Command]
		require.False(t, dup, "two events of command %s: %s", ev.Command, r.Payload)
		out[ev.Command] = ev
	}
	return out
}

// conflicts returns how many of the errors given to Retryable were the
// dialect's conflict errors (isConflict).
func (sf *conflictFixture) conflicts() int {
	close(sf.seen)
	n := 0
	for err := range sf.seen {
		if isConflict(sf.dialect, err) {
			n++
		}
	}
	return n
}

// requireRetriedToCompletion checks that both commands committed, at least
// one of them after a conflict and a rerun, and that only the final attempt
// of each left its event.
func (sf *conflictFixture) requireRetriedToCompletion(t *testing.T, errs map[string]error, maxRetries int32) map[string]Attempted {
	t.Helper()
	require.NoError(t, errs["a"])
	require.NoError(t, errs["b"])
	a, b := sf.attempts["a"].Load(), sf.attempts["b"].Load()
	require.Greater(t, a+b, int32(2), "no command was retried")
	require.LessOrEqual(t, a, 1+maxRetries)
	require.LessOrEqual(t, b, 1+maxRetries)
	require.Positive(t, sf.conflicts(), "no conflict error reached Retryable")
	evs := sf.events(t)
	require.Len(t, evs, 2)
	require.Equal(t, a, evs["a"].Attempt)
	require.Equal(t, b, evs["b"].Attempt)
	return evs
}

// Concurrent update: both read the counter, then both write it. On
// PostgreSQL the second writer waits for the first one's row lock and, once
// that commits, fails with "could not serialize access due to concurrent
// update". On MySQL both reads took shared locks, so each write waits for
// the other's: InnoDB breaks the deadlock by rolling one back.
var counterSetup = []string{
	`CREATE TABLE counters (id VARCHAR(64) PRIMARY KEY, value INTEGER NOT NULL)`,
	`INSERT INTO counters VALUES ('c', 0)`,
}

func counterHandler(ctx context.Context, name string, attempt int32, readDone func() error) (Attempted, error) {
	tx, err := outbox.Tx(ctx)
	if err != nil {
		return Attempted{}, err
	}
	var v int
	if err := tx.Raw("SELECT value FROM counters WHERE id = 'c'").Scan(&v).Error; err != nil {
		return Attempted{}, err
	}
	if err := readDone(); err != nil {
		return Attempted{}, err
	}
	if err := tx.Exec("UPDATE counters SET value = ? WHERE id = 'c'", v+1).Error; err != nil {
		return Attempted{}, err
	}
	return Attempted{Outcome: fmt.Sprint("counter=", v+1)}, nil
}

// Write skew: two doctors on call; each goes off call if the other is still
// on call. Each reads both rows and writes only its own, so no row lock
// conflicts on PostgreSQL: SSI detects the dangerous structure and aborts
// one of them. On MySQL the reads took shared locks on both rows, and each
// write waits for the other's: a deadlock.
var doctorsSetup = []string{
	`CREATE TABLE doctors (name VARCHAR(64) PRIMARY KEY, on_call BOOLEAN NOT NULL)`,
	`INSERT INTO doctors VALUES ('a', true), ('b', true)`,
}

func doctorsHandler(ctx context.Context, name string, attempt int32, readDone func() error) (Attempted, error) {
	tx, err := outbox.Tx(ctx)
	if err != nil {
		return Attempted{}, err
	}
	var onCall int
	if err := tx.Raw("SELECT count(*) FROM doctors WHERE on_call").Scan(&onCall).Error; err != nil {
		return Attempted{}, err
	}
	if err := readDone(); err != nil {
		return Attempted{}, err
	}
	if onCall < 2 {
		return Attempted{Outcome: "stayed"}, nil
	}
	if err := tx.Exec("UPDATE doctors SET on_call = false WHERE name = ?", name).Error; err != nil {
		return Attempted{}, err
	}
	return Attempted{Outcome: "left"}, nil
}

// eachConflictDialect runs fn as a parallel subtest per conflict dialect.
func eachConflictDialect(t *testing.T, fn func(t *testing.T, d testdb.Dialect)) {
	t.Helper()
	for _, d := range conflictDialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			fn(t, d)
		})
	}
}

func TestSerializationFailureIsRetried(t *testing.T) {
	t.Parallel()
	const maxRetries = 3
	eachConflictDialect(t, func(t *testing.T, d testdb.Dialect) {
		t.Run("concurrent update", func(t *testing.T) {
			t.Parallel()
			sf := newSerializableFixture(t, d, maxRetries, counterSetup, counterHandler)
			evs := sf.requireRetriedToCompletion(t, sf.dispatchBoth(), maxRetries)

			var v int
			require.NoError(t, sf.db.Raw("SELECT value FROM counters").Scan(&v).Error)
			require.Equal(t, 2, v, "an increment was lost")
			// The failed attempt's event ("counter=1" by the loser) was
			// discarded.
			require.ElementsMatch(t, []string{"counter=1", "counter=2"}, []string{evs["a"].Outcome, evs["b"].Outcome})
		})
		t.Run("write skew", func(t *testing.T) {
			t.Parallel()
			sf := newSerializableFixture(t, d, maxRetries, doctorsSetup, doctorsHandler)
			evs := sf.requireRetriedToCompletion(t, sf.dispatchBoth(), maxRetries)

			var onCall int
			require.NoError(t, sf.db.Raw("SELECT count(*) FROM doctors WHERE on_call").Scan(&onCall).Error)
			require.Equal(t, 1, onCall, "write skew: both doctors went off call")
			require.ElementsMatch(t, []string{"left", "stayed"}, []string{evs["a"].Outcome, evs["b"].Outcome})
		})
	})
}

// Crossed updates: "a" updates row x and then y, "b" y and then x, at the
// default isolation level. Each holds the row the other wants next: a
// deadlock, which the database breaks by failing one of them (InnoDB error
// 1213, PostgreSQL SQLSTATE 40P01).
var accountsSetup = []string{
	`CREATE TABLE accounts (id VARCHAR(64) PRIMARY KEY, balance INTEGER NOT NULL)`,
	`INSERT INTO accounts VALUES ('x', 0), ('y', 0)`,
}

func crossedHandler(ctx context.Context, name string, attempt int32, firstDone func() error) (Attempted, error) {
	tx, err := outbox.Tx(ctx)
	if err != nil {
		return Attempted{}, err
	}
	order := map[string][2]string{"a": {"x", "y"}, "b": {"y", "x"}}[name]
	if err := tx.Exec("UPDATE accounts SET balance = balance + 1 WHERE id = ?", order[0]).Error; err != nil {
		return Attempted{}, err
	}
	if err := firstDone(); err != nil {
		return Attempted{}, err
	}
	if err := tx.Exec("UPDATE accounts SET balance = balance + 1 WHERE id = ?", order[1]).Error; err != nil {
		return Attempted{}, err
	}
	return Attempted{Outcome: "moved"}, nil
}

// TestDeadlockLoserIsRerun: of two commands that deadlock, the one the
// database fails is run again by the middleware, with the store's
// Retryable, and both commit their writes and events once.
func TestDeadlockLoserIsRerun(t *testing.T) {
	t.Parallel()
	const maxRetries = 3
	eachConflictDialect(t, func(t *testing.T, d testdb.Dialect) {
		sf := newConflictFixture(t, d, sql.LevelDefault, maxRetries, accountsSetup, crossedHandler)
		errs := sf.dispatchBoth()
		sf.requireRetriedToCompletion(t, errs, maxRetries)

		var balances []int
		require.NoError(t, sf.db.Raw("SELECT balance FROM accounts ORDER BY id").Scan(&balances).Error)
		require.Equal(t, []int{2, 2}, balances, "each command's updates committed once")
	})
}

func TestSerializationFailureWithRetriesDisabled(t *testing.T) {
	t.Parallel()
	eachConflictDialect(t, func(t *testing.T, d testdb.Dialect) {
		sf := newSerializableFixture(t, d, -1, counterSetup, counterHandler)
		errs := sf.dispatchBoth()

		var winner, loser string
		switch {
		case errs["a"] == nil && errs["b"] != nil:
			winner, loser = "a", "b"
		case errs["b"] == nil && errs["a"] != nil:
			winner, loser = "b", "a"
		default:
			t.Fatalf("want exactly one failure, got a=%v b=%v", errs["a"], errs["b"])
		}
		require.True(t, isConflict(d, errs[loser]), "the loser fails with the database's conflict error, got %v", errs[loser])
		require.Equal(t, int32(1), sf.attempts["a"].Load())
		require.Equal(t, int32(1), sf.attempts["b"].Load())

		var v int
		require.NoError(t, sf.db.Raw("SELECT value FROM counters").Scan(&v).Error)
		require.Equal(t, 1, v)
		evs := sf.events(t)
		require.Len(t, evs, 1, "the failed command's event was saved")
		require.Contains(t, evs, winner)
	})
}

// serializationError is what PostgreSQL returns for a serialization failure.
func serializationError() error {
	return fmt.Errorf("update: %w", &pgconn.PgError{Code: "40001", Message: "could not serialize access"})
}

// isSerializationError is the Retryable of the tests of the retry loop
// itself, on every database: SQLite's store calls no error retryable.
func isSerializationError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "40001"
}

func TestRetryBound(t *testing.T) {
	t.Parallel()
	cases := []struct {
		maxRetries int
		runs       int32
	}{
		{maxRetries: 0, runs: 1 + middleware.DefaultMaxRetries},
		{maxRetries: 1, runs: 2},
		{maxRetries: 5, runs: 6},
		{maxRetries: -1, runs: 1},
	}
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		for _, tc := range cases {
			t.Run(fmt.Sprint("MaxRetries=", tc.maxRetries), func(t *testing.T) {
				f := newFixture(t, d, withConfig(func(c *middleware.TransactionalConfig) {
					c.MaxRetries = tc.maxRetries
					c.RetryBackoff = time.Microsecond
					c.Retryable = isSerializationError
				}))
				var runs atomic.Int32
				var last error
				err := f.run(context.Background(), func(ctx context.Context) error {
					n := runs.Add(1)
					require.NoError(t, insertOrder(ctx, fmt.Sprint("o-", n), 1))
					require.NoError(t, outbox.Emit(ctx, AuditLogged{Seq: int(n)}))
					last = serializationError()
					return last
				})
				require.True(t, err == last, "the last attempt's error is returned unchanged, got %v", err) //nolint:errorlint
				require.Equal(t, tc.runs, runs.Load())
				f.requireNothingSaved(t)
			})
		}
	})
}

func TestRetrySucceedsAndKeepsOnlyTheLastAttempt(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		var commits []middleware.AfterCommitParams
		f := newFixture(t, d, withConfig(func(c *middleware.TransactionalConfig) {
			c.AfterCommit = []func(middleware.AfterCommitParams){func(p middleware.AfterCommitParams) {
				commits = append(commits, p)
			}}
			c.Retryable = isSerializationError
		}))
		var runs int
		var ids []string
		require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
			runs++
			ids = append(ids, commandOf(t, ctx).ID)
			require.NoError(t, insertOrder(ctx, fmt.Sprint("o-", runs), runs))
			require.NoError(t, outbox.Emit(ctx, AuditLogged{Seq: runs}))
			// The nested command fails in the first two attempts and the
			// caller returns its error: the whole command is retried.
			return f.run(ctx, func(ctx context.Context) error {
				require.NoError(t, outbox.Emit(ctx, OrderShipped{OrderID: fmt.Sprint("o-", runs)}))
				if runs < 3 {
					return serializationError()
				}
				return nil
			})
		}))
		require.Equal(t, 3, runs)
		require.Equal(t, ids[0], ids[2], "a retry is the same command")

		var orders []string
		require.NoError(t, f.db.Raw("SELECT id FROM orders").Scan(&orders).Error)
		require.Equal(t, []string{"o-3"}, orders)
		rows := f.outbox(t)
		require.Len(t, rows, 2)
		require.JSONEq(t, `{"seq":3}`, string(rows[0].Payload))
		require.JSONEq(t, `{"order_id":"o-3"}`, string(rows[1].Payload))
		require.Len(t, commits, 1, "AfterCommit runs once, for the attempt that committed")
		require.Equal(t, rows[0].UUID, commits[0].Records[0].Message.UUID)
	})
}

func TestRetryStopsWhenContextIsDone(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.SQLite, withConfig(func(c *middleware.TransactionalConfig) {
		c.MaxRetries = 10
		c.Retryable = isSerializationError
	}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runs := 0
	err := f.run(ctx, func(ctx context.Context) error {
		runs++
		cancel()
		return serializationError()
	})
	require.True(t, isSerializationError(err), "got %v", err)
	require.Equal(t, 1, runs)
}

func TestCustomRetryable(t *testing.T) {
	t.Parallel()
	errBusy := errors.New("busy")
	f := newFixture(t, testdb.SQLite, withConfig(func(c *middleware.TransactionalConfig) {
		c.Retryable = func(err error) bool { return errors.Is(err, errBusy) }
	}))
	runs := 0
	require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
		runs++
		if runs == 1 {
			return errBusy
		}
		return nil
	}))
	require.Equal(t, 2, runs)

	// The default classification no longer applies.
	runs = 0
	require.Error(t, f.run(context.Background(), func(ctx context.Context) error {
		runs++
		return serializationError()
	}))
	require.Equal(t, 1, runs)
}
