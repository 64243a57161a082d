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

// serializableFixture runs two conflicting commands, "a" and "b", on
// PostgreSQL at SERIALIZABLE. handler runs one attempt; it must call
// readDone after its reads, which holds the first attempt of each command
// until both have read, so their transactions overlap for certain.
type serializableFixture struct {
	*fixture
	attempts map[string]*atomic.Int32
	seen     chan error // errors given to Retryable
}

func newSerializableFixture(t *testing.T, maxRetries int, setup string,
	handler func(ctx context.Context, name string, attempt int32, readDone func() error) (Attempted, error),
) *serializableFixture {
	t.Helper()
	sf := &serializableFixture{
		attempts: map[string]*atomic.Int32{"a": {}, "b": {}},
		seen:     make(chan error, 100),
	}
	sf.fixture = newFixture(t, testdb.Postgres, withConfig(func(c *middleware.TransactionalConfig) {
		c.Isolation = sql.LevelSerializable
		c.MaxRetries = maxRetries
		c.Retryable = func(err error) bool {
			sf.seen <- err
			return sf.fixture.store.Retryable(err)
		}
	}))
	require.NoError(t, sf.db.Exec(setup).Error)

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

// dispatchBoth dispatches "a" and "b" concurrently and returns their errors.
func (sf *serializableFixture) dispatchBoth() map[string]error {
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

func (sf *serializableFixture) events(t *testing.T) map[string]Attempted {
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

func (sf *serializableFixture) serializationFailures() int {
	close(sf.seen)
	n := 0
	for err := range sf.seen {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "40001" {
			n++
		}
	}
	return n
}

// Concurrent update: both read the counter, then both write it. The second
// writer waits for the first one's row lock and, once that commits, fails
// with "could not serialize access due to concurrent update".
const counterSetup = `CREATE TABLE counters (id VARCHAR(64) PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters VALUES ('c', 0);`

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
// conflicts: SSI detects the dangerous structure and aborts one of them.
const doctorsSetup = `CREATE TABLE doctors (name VARCHAR(64) PRIMARY KEY, on_call BOOLEAN NOT NULL);
INSERT INTO doctors VALUES ('a', true), ('b', true);`

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

func TestSerializationFailureIsRetried(t *testing.T) {
	t.Parallel()
	const maxRetries = 3
	t.Run("concurrent update", func(t *testing.T) {
		t.Parallel()
		sf := newSerializableFixture(t, maxRetries, counterSetup, counterHandler)
		errs := sf.dispatchBoth()
		require.NoError(t, errs["a"])
		require.NoError(t, errs["b"])

		a, b := sf.attempts["a"].Load(), sf.attempts["b"].Load()
		require.Greater(t, a+b, int32(2), "no command was retried")
		require.LessOrEqual(t, a, int32(1+maxRetries))
		require.LessOrEqual(t, b, int32(1+maxRetries))
		require.Positive(t, sf.serializationFailures(), "no SQLSTATE 40001 was seen")

		var v int
		require.NoError(t, sf.db.Raw("SELECT value FROM counters").Scan(&v).Error)
		require.Equal(t, 2, v, "an increment was lost")

		// Only the final attempt of each command left its event; the
		// failed attempt's ("counter=1" by the loser) was discarded.
		evs := sf.events(t)
		require.Len(t, evs, 2)
		require.Equal(t, a, evs["a"].Attempt)
		require.Equal(t, b, evs["b"].Attempt)
		outcomes := []string{evs["a"].Outcome, evs["b"].Outcome}
		require.ElementsMatch(t, []string{"counter=1", "counter=2"}, outcomes)
	})
	t.Run("write skew", func(t *testing.T) {
		t.Parallel()
		sf := newSerializableFixture(t, maxRetries, doctorsSetup, doctorsHandler)
		errs := sf.dispatchBoth()
		require.NoError(t, errs["a"])
		require.NoError(t, errs["b"])

		a, b := sf.attempts["a"].Load(), sf.attempts["b"].Load()
		require.Greater(t, a+b, int32(2), "no command was retried")
		require.LessOrEqual(t, a, int32(1+maxRetries))
		require.LessOrEqual(t, b, int32(1+maxRetries))
		require.Positive(t, sf.serializationFailures(), "no SQLSTATE 40001 was seen")

		var onCall int
		require.NoError(t, sf.db.Raw("SELECT count(*) FROM doctors WHERE on_call").Scan(&onCall).Error)
		require.Equal(t, 1, onCall, "write skew: both doctors went off call")

		evs := sf.events(t)
		require.Len(t, evs, 2)
		require.Equal(t, a, evs["a"].Attempt)
		require.Equal(t, b, evs["b"].Attempt)
		require.ElementsMatch(t, []string{"left", "stayed"}, []string{evs["a"].Outcome, evs["b"].Outcome})
	})
}

func TestSerializationFailureWithRetriesDisabled(t *testing.T) {
	t.Parallel()
	sf := newSerializableFixture(t, -1, counterSetup, counterHandler)
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
	var pgErr *pgconn.PgError
	require.ErrorAs(t, errs[loser], &pgErr)
	require.Equal(t, "40001", pgErr.Code)
	require.Equal(t, int32(1), sf.attempts["a"].Load())
	require.Equal(t, int32(1), sf.attempts["b"].Load())

	var v int
	require.NoError(t, sf.db.Raw("SELECT value FROM counters").Scan(&v).Error)
	require.Equal(t, 1, v)
	evs := sf.events(t)
	require.Len(t, evs, 1, "the failed command's event was saved")
	require.Contains(t, evs, winner)
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
