package middleware

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/internal/ctxtime"
	"github.com/txoutbox/txoutbox/internal/typename"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// Defaults of TransactionalConfig.
const (
	// DefaultMaxRetries is the default number of times a command is run
	// again after a serialization failure or deadlock.
	DefaultMaxRetries = 3
	// DefaultRetryBackoff is the default wait before the first retry; it
	// doubles with each retry and is jittered by ±50%.
	DefaultRetryBackoff = 5 * time.Millisecond
)

// ErrInvalidConfig wraps every TransactionalConfig problem.
var ErrInvalidConfig = errors.New("middleware: invalid config")

// TransactionalConfig configures [Transactional].
type TransactionalConfig struct {
	// DB is the database the handlers write to. Required.
	DB *gorm.DB
	// Store saves the events. Required; for example the result of
	// gormstore.New(db, gormstore.Config{}).
	Store outbox.Store
	// Encoder turns events into messages. Optional; default
	// outbox.NewEncoder(outbox.EncoderConfig{}) (JSON, UUIDv7).
	Encoder *outbox.Encoder
	// Isolation is the transaction isolation level. Optional; default
	// sql.LevelDefault, the database's default (READ COMMITTED on
	// PostgreSQL, REPEATABLE READ on MySQL). One of LevelDefault,
	// LevelReadUncommitted, LevelReadCommitted, LevelRepeatableRead,
	// LevelSerializable.
	Isolation sql.IsolationLevel
	// ReadOnly runs commands in read-only transactions. A command that
	// emits an event then fails with outbox.ErrReadOnly, on every database.
	// PostgreSQL and MySQL also reject the handler's writes (SQLSTATE
	// 25006, MySQL error 1792). The SQLite driver
	// (github.com/glebarez/sqlite) accepts read-only transactions but does
	// not enforce them: it begins a deferred transaction instead of the
	// configured _txlock one, and business writes still commit. Optional;
	// default false.
	ReadOnly bool
	// MaxRetries bounds how many times a top-level command is run again
	// after an error Retryable accepts. Optional; 0 means
	// DefaultMaxRetries (3), a negative value disables retries.
	MaxRetries int
	// RetryBackoff is the wait before the first retry, doubled for each
	// further retry and jittered by ±50%. Optional; default
	// DefaultRetryBackoff (5ms).
	RetryBackoff time.Duration
	// Retryable reports whether a failed command may be run again.
	// Optional; default the Store's Retryable when it is an
	// outbox.RetryClassifier (gormstore.Store: PostgreSQL 40001 and
	// 40P01, MySQL 1213 and 1205), else no retries.
	Retryable func(error) bool
	// CommandName names a command for event metadata (outbox.MetadataCommand).
	// Optional; default cqrs.StructName ("PlaceOrder").
	CommandName func(cmd any) string
	// AfterCommit functions are called, in order and synchronously, after a
	// top-level command's transaction commits with at least one event saved.
	// Optional.
	AfterCommit []func(AfterCommitParams)
	// Wake is woken after a top-level command's transaction commits with
	// at least one event saved, after the AfterCommit functions: pass the
	// outbox.Forwarder of the same process, so that it relays at once
	// instead of at its next poll. Optional.
	Wake Waker
}

// Waker is what TransactionalConfig.Wake wakes; *outbox.Forwarder is one.
type Waker interface {
	// Wake asks for a relay pass soon; it must not block.
	Wake()
}

// AfterCommitParams describes a commit for TransactionalConfig.AfterCommit.
type AfterCommitParams struct {
	// Ctx is the context the command was dispatched with.
	Ctx context.Context
	// Command is the committed command.
	Command outbox.Command
	// Records are the events saved with the commit, in emit order.
	Records []outbox.Record
}

// Validate reports every problem with the config, each saying how to fix it.
func (c TransactionalConfig) Validate() error {
	var errs []error
	if c.DB == nil {
		errs = append(errs, fmt.Errorf("%w: missing DB (pass the *gorm.DB your handlers write to)", ErrInvalidConfig))
	}
	if c.Store == nil {
		errs = append(errs, fmt.Errorf("%w: missing Store (try gormstore.New(db, gormstore.Config{}))", ErrInvalidConfig))
	}
	switch c.Isolation {
	case sql.LevelDefault, sql.LevelReadUncommitted, sql.LevelReadCommitted, sql.LevelRepeatableRead, sql.LevelSerializable:
	default:
		errs = append(errs, fmt.Errorf("%w: Isolation %v is not supported (use sql.LevelDefault, LevelReadCommitted, LevelRepeatableRead or LevelSerializable)", ErrInvalidConfig, c.Isolation))
	}
	if c.RetryBackoff < 0 {
		errs = append(errs, fmt.Errorf("%w: RetryBackoff %v is negative (use 0 for the default %v)", ErrInvalidConfig, c.RetryBackoff, DefaultRetryBackoff))
	}
	for i, f := range c.AfterCommit {
		if f == nil {
			errs = append(errs, fmt.Errorf("%w: AfterCommit[%d] is nil", ErrInvalidConfig, i))
		}
	}
	return errors.Join(errs...)
}

// Transactional runs commands in GORM transactions and saves their events
// to the outbox before commit. See the package documentation for the rules.
// It is safe for concurrent use.
type Transactional struct {
	cfg    TransactionalConfig
	txOpts *sql.TxOptions
}

// NewTransactional validates cfg, fills in its defaults and returns the
// middleware.
func NewTransactional(cfg TransactionalConfig) (*Transactional, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Encoder == nil {
		cfg.Encoder = outbox.NewEncoder(outbox.EncoderConfig{})
	}
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = DefaultMaxRetries
	}
	cfg.RetryBackoff = cmp.Or(cfg.RetryBackoff, DefaultRetryBackoff)
	if cfg.Retryable == nil {
		if rc, ok := cfg.Store.(outbox.RetryClassifier); ok {
			cfg.Retryable = rc.Retryable
		} else {
			cfg.Retryable = func(error) bool { return false }
		}
	}
	if cfg.CommandName == nil {
		cfg.CommandName = typename.StructName
	}
	t := &Transactional{cfg: cfg}
	if cfg.Isolation != sql.LevelDefault || cfg.ReadOnly {
		t.txOpts = &sql.TxOptions{Isolation: cfg.Isolation, ReadOnly: cfg.ReadOnly}
	}
	return t, nil
}

// Middleware returns the bus middleware form of t.
func (t *Transactional) Middleware() bus.Middleware {
	return func(next bus.Handler) bus.Handler {
		return func(ctx context.Context, cmd any) error {
			return t.Run(ctx, t.cfg.CommandName(cmd), func(ctx context.Context) error {
				return next(ctx, cmd)
			})
		}
	}
}

// Run runs fn as the command named name: in a new transaction, or joining
// the transaction ctx carries. fn's error is returned unchanged.
func (t *Transactional) Run(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	cmd := outbox.Command{
		ID:            outbox.NewUUID(),
		Name:          name,
		CorrelationID: outbox.CorrelationID(ctx),
	}
	if cmd.CorrelationID == "" {
		cmd.CorrelationID = cmd.ID
	}
	if parent, err := outbox.Tx(ctx); err == nil {
		return t.join(ctx, parent, cmd, fn)
	}
	return t.runTop(ctx, cmd, fn)
}

// join runs a nested command inside a savepoint of the caller's transaction.
func (t *Transactional) join(ctx context.Context, parent *gorm.DB, cmd outbox.Command, fn func(ctx context.Context) error) (err error) {
	parentCol, _, hasParentCol := outbox.CollectorFrom(ctx)
	readOnly := t.cfg.ReadOnly
	if hasParentCol {
		readOnly = readOnly || parentCol.ReadOnly()
	}
	// An explicit savepoint, not GORM's nested Transaction, so the rule
	// holds also with gorm.Config{DisableNestedTransaction: true}.
	sp := "txoutbox_" + strings.ReplaceAll(cmd.ID, "-", "")
	if err := parent.SavePoint(sp).Error; err != nil {
		return fmt.Errorf("middleware: savepoint for nested command %s: %w", cmd.Name, err)
	}
	panicked := true
	defer func() {
		if panicked || err != nil {
			if rbErr := parent.RollbackTo(sp).Error; rbErr != nil {
				if err != nil {
					err = errors.Join(err, fmt.Errorf("middleware: rollback to savepoint: %w", rbErr))
				}
				// The savepoint is gone, so the transaction it was in is
				// too: MySQL ends a transaction it picks as a deadlock's
				// victim, savepoints and all. The caller must not carry
				// on as if only this command had failed.
				breakTop(ctx, parent, fmt.Errorf("middleware: nested command %s failed and the transaction ended with it: %w", cmd.Name, cmp.Or(err, rbErr)))
			}
		}
	}()
	col := outbox.NewCollector(readOnly)
	err = t.call(ctx, parent, col, cmd, fn)
	panicked = false
	if err != nil {
		return err
	}
	if hasParentCol {
		return parentCol.Merge(col)
	}
	// The application owns the transaction: save now, it commits.
	_, err = t.save(ctx, parent, col)
	return err
}

// runTop runs a top-level command in its own transaction, retrying it on
// retryable errors.
func (t *Transactional) runTop(ctx context.Context, cmd outbox.Command, fn func(ctx context.Context) error) error {
	for attempt := 0; ; attempt++ {
		var recs []outbox.Record
		err := outbox.RunTx(ctx, t.cfg.DB, t.cfg.Store, t.txOpts, func(tx *gorm.DB) ([]outbox.Record, error) {
			col := outbox.NewCollector(t.cfg.ReadOnly)
			top := &topTx{tx: tx}
			if err := t.call(context.WithValue(ctx, topKey{}, top), tx, col, cmd, fn); err != nil {
				return nil, err
			}
			if err := top.err(); err != nil {
				return nil, err // the handler went on after the transaction ended
			}
			var err error
			recs, err = t.encode(col)
			return recs, err
		})
		if err == nil {
			if len(recs) > 0 {
				if n, ok := t.cfg.Store.(outbox.CommitNotifier); ok {
					n.NotifyCommitted()
				}
				p := AfterCommitParams{Ctx: ctx, Command: cmd, Records: recs}
				for _, f := range t.cfg.AfterCommit {
					f(p)
				}
				if t.cfg.Wake != nil {
					t.cfg.Wake.Wake()
				}
			}
			return nil
		}
		if attempt >= t.cfg.MaxRetries || !t.cfg.Retryable(err) || ctx.Err() != nil {
			return err
		}
		if !ctxtime.Sleep(ctx, t.backoff(attempt)) {
			return err
		}
	}
}

type topKey struct{}

// topTx is the transaction of a top-level command, as the nested commands
// that join it see it.
type topTx struct {
	tx     *gorm.DB
	mu     sync.Mutex
	broken error
}

func (t *topTx) err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.broken
}

// breakTop records that the top-level transaction in ctx, if parent is in
// it, ended under a nested command. The command then fails with err, even
// if its handler ignores the nested command's error, and every later
// statement through its transaction fails with err instead of running
// outside any transaction (in autocommit mode) on that connection.
func breakTop(ctx context.Context, parent *gorm.DB, err error) {
	top, ok := ctx.Value(topKey{}).(*topTx)
	if !ok || top.tx.Statement.ConnPool != parent.Statement.ConnPool {
		return // a transaction of the application's: its caller decides
	}
	top.mu.Lock()
	defer top.mu.Unlock()
	if top.broken == nil {
		top.broken = err
		_ = top.tx.AddError(err)
	}
}

// call runs fn with tx and col in its context and checks the collector.
func (t *Transactional) call(ctx context.Context, tx *gorm.DB, col *outbox.Collector, cmd outbox.Command, fn func(ctx context.Context) error) error {
	defer col.Close()
	cctx := outbox.WithTx(outbox.WithCollector(ctx, col, cmd), tx)
	if err := fn(cctx); err != nil {
		return err
	}
	// An Emit error fails the command even when the handler ignored it.
	return col.Err()
}

// encode encodes the collected events.
func (t *Transactional) encode(col *outbox.Collector) ([]outbox.Record, error) {
	entries := col.Entries()
	if len(entries) == 0 {
		return nil, nil
	}
	return t.cfg.Encoder.EncodeAll(entries)
}

// save encodes the collected events and writes them in tx.
func (t *Transactional) save(ctx context.Context, tx *gorm.DB, col *outbox.Collector) ([]outbox.Record, error) {
	recs, err := t.encode(col)
	if err != nil || len(recs) == 0 {
		return nil, err
	}
	if err := t.cfg.Store.Save(ctx, tx, recs); err != nil {
		return nil, err
	}
	return recs, nil
}

func (t *Transactional) backoff(attempt int) time.Duration {
	d := t.cfg.RetryBackoff << min(attempt, 16)
	return d/2 + rand.N(d+1)
}
