package retention

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"time"

	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers/inbox"
)

// Defaults of Config.
const (
	// DefaultInterval is the time between two runs of Cleaner.Run.
	DefaultInterval = time.Minute
	// DefaultOutboxRetention keeps delivered outbox rows for a week.
	DefaultOutboxRetention = 7 * 24 * time.Hour
	// DefaultInboxRetention keeps inbox rows for a week, far longer than
	// brokers and the outbox forwarder take to redeliver.
	DefaultInboxRetention = inbox.DefaultRetention
	// DefaultBatchSize is the number of rows deleted per statement.
	DefaultBatchSize = 1000
	// MaxBatchSize bounds BatchSize: a batch is one statement whose row
	// locks are held until it commits.
	MaxBatchSize = 100_000
)

// ErrInvalidConfig wraps every Config problem.
var ErrInvalidConfig = errors.New("retention: invalid config")

// OutboxPurger deletes delivered outbox rows in batches.
// *gormstore.Store implements it.
type OutboxPurger interface {
	// PurgeDeliveredBatch deletes at most limit rows delivered more than
	// olderThan ago and returns how many it deleted; fewer than limit
	// means no more are due (for now).
	PurgeDeliveredBatch(ctx context.Context, olderThan time.Duration, limit int) (int64, error)
}

// InboxCleaner deletes old inbox rows. *inbox.Inbox implements it.
type InboxCleaner interface {
	// Cleanup deletes the rows received more than olderThan ago, batch rows
	// per statement, and returns how many it deleted.
	Cleanup(ctx context.Context, olderThan time.Duration, batch int) (int64, error)
}

var (
	_ OutboxPurger = (*gormstore.Store)(nil)
	_ InboxCleaner = (*inbox.Inbox)(nil)
)

// Config configures a [Cleaner]. Outbox, Inbox or both must be set; every
// other field is optional.
type Config struct {
	// Outbox is the outbox table whose delivered rows are deleted: a
	// *gormstore.Store with KeepDelivered (without it delivered rows are
	// deleted at delivery and there is nothing to purge). Optional.
	Outbox OutboxPurger
	// Inbox is the inbox table whose old rows are deleted: an
	// *inbox.Inbox. Optional.
	Inbox InboxCleaner
	// Interval is the time between two runs of Run, ±10% jitter so that
	// instances started together spread out. Optional; default
	// DefaultInterval (1m).
	Interval time.Duration
	// OutboxRetention is how long delivered outbox rows are kept, measured
	// from delivery. Optional; default DefaultOutboxRetention (7 days).
	OutboxRetention time.Duration
	// InboxRetention is how long inbox rows are kept, measured from
	// receipt. It must exceed the longest time a duplicate can arrive
	// after the original (see inbox.Inbox.Cleanup): a message redelivered
	// after its row is deleted is processed again. Optional; default
	// DefaultInboxRetention (7 days).
	InboxRetention time.Duration
	// BatchSize is the most rows one statement deletes; each batch commits
	// on its own, so locks are held briefly. Optional; default
	// DefaultBatchSize (1000), at most MaxBatchSize.
	BatchSize int
	// Logger receives a line per run that deleted rows (info), per failed
	// run (warn), and per idle run (debug). Optional; default
	// slog.Default().
	Logger *slog.Logger
	// OnRun, when set, is called after every run of Run with its result,
	// for metrics. Optional.
	OnRun func(OnRunParams)
}

// OnRunParams describes one run of Cleaner.Run, for Config.OnRun.
type OnRunParams struct {
	// Result counts what the run deleted, also when it failed part-way.
	Result Result
	// Err is the run's error, nil when it succeeded.
	Err error
}

// Validate reports every problem with the config, each wrapping
// ErrInvalidConfig.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if isNil(c.Outbox) && isNil(c.Inbox) {
		bad("nothing to clean (set Outbox to a *gormstore.Store with KeepDelivered, Inbox to an *inbox.Inbox, or both)")
	}
	if c.Interval < 0 {
		bad("Interval %v is negative (use 0 for the default %v)", c.Interval, DefaultInterval)
	}
	if c.OutboxRetention < 0 {
		bad("OutboxRetention %v is negative (use 0 for the default %v)", c.OutboxRetention, DefaultOutboxRetention)
	}
	if c.InboxRetention < 0 {
		bad("InboxRetention %v is negative (use 0 for the default %v)", c.InboxRetention, DefaultInboxRetention)
	}
	if c.BatchSize < 0 || c.BatchSize > MaxBatchSize {
		bad("BatchSize %d is out of range (use 1 to %d, or 0 for the default %d)", c.BatchSize, MaxBatchSize, DefaultBatchSize)
	}
	return errors.Join(errs...)
}

// WithDefaults returns the config with every unset optional field set to
// its default. A nil pointer in Outbox or Inbox (a (*gormstore.Store)(nil)
// in the interface) counts as unset.
func (c Config) WithDefaults() Config {
	if isNil(c.Outbox) {
		c.Outbox = nil
	}
	if isNil(c.Inbox) {
		c.Inbox = nil
	}
	c.Interval = cmp.Or(c.Interval, DefaultInterval)
	c.OutboxRetention = cmp.Or(c.OutboxRetention, DefaultOutboxRetention)
	c.InboxRetention = cmp.Or(c.InboxRetention, DefaultInboxRetention)
	c.BatchSize = cmp.Or(c.BatchSize, DefaultBatchSize)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Result counts what one run deleted.
type Result struct {
	// OutboxDeleted is the number of delivered outbox rows deleted.
	OutboxDeleted int64
	// InboxDeleted is the number of inbox rows deleted.
	InboxDeleted int64
	// Duration is how long the run took.
	Duration time.Duration
}

// Cleaner deletes delivered outbox rows and old inbox rows in small
// batches. Run it on one instance or several: concurrent cleaners never
// fail because of each other, and each row is counted by the cleaner that
// deleted it. It is safe for concurrent use.
type Cleaner struct {
	cfg Config
}

// New returns a cleaner for cfg, or cfg's problems (wrapping
// ErrInvalidConfig).
func New(cfg Config) (*Cleaner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Cleaner{cfg: cfg.WithDefaults()}, nil
}

// RunOnce deletes every due row, batch by batch: first delivered outbox
// rows older than OutboxRetention, then inbox rows older than
// InboxRetention. It returns what it deleted, also on error; an error on
// one table does not keep it from cleaning the other. It stops between
// batches when ctx ends.
func (c *Cleaner) RunOnce(ctx context.Context) (Result, error) {
	start := time.Now()
	var res Result
	var errs []error
	if c.cfg.Outbox != nil {
		n, err := c.purgeOutbox(ctx)
		res.OutboxDeleted = n
		if err != nil {
			errs = append(errs, fmt.Errorf("retention: outbox: %w", err))
		}
	}
	if c.cfg.Inbox != nil && ctx.Err() == nil {
		n, err := c.cfg.Inbox.Cleanup(ctx, c.cfg.InboxRetention, c.cfg.BatchSize)
		res.InboxDeleted = n
		if err != nil {
			errs = append(errs, fmt.Errorf("retention: inbox: %w", err))
		}
	}
	if err := ctx.Err(); err != nil && len(errs) == 0 {
		errs = append(errs, err)
	}
	res.Duration = time.Since(start)
	return res, errors.Join(errs...)
}

func (c *Cleaner) purgeOutbox(ctx context.Context) (int64, error) {
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := c.cfg.Outbox.PurgeDeliveredBatch(ctx, c.cfg.OutboxRetention, c.cfg.BatchSize)
		total += n
		if err != nil || n < int64(c.cfg.BatchSize) {
			return total, err
		}
	}
}

// Run calls RunOnce at once and then every Interval until ctx ends, and
// returns nil then. A failed run is logged and reported to OnRun; the next
// one retries. A run cut short by ctx is reported (without the
// cancellation as its error) when it deleted rows; the rows it left are
// deleted by the next cleaner to run.
func (c *Cleaner) Run(ctx context.Context) error {
	for {
		res, err := c.RunOnce(ctx)
		if ctx.Err() != nil {
			if res.OutboxDeleted+res.InboxDeleted > 0 {
				c.report(context.WithoutCancel(ctx), res, nil)
			}
			return nil
		}
		c.report(ctx, res, err)
		t := time.NewTimer(jitter(c.cfg.Interval))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// report logs a run and passes it to OnRun.
func (c *Cleaner) report(ctx context.Context, res Result, err error) {
	log := c.cfg.Logger
	attrs := []any{
		slog.Int64("outbox_deleted", res.OutboxDeleted),
		slog.Int64("inbox_deleted", res.InboxDeleted),
		slog.Duration("duration", res.Duration),
	}
	switch {
	case err != nil:
		log.WarnContext(ctx, "retention run failed; retrying at the next interval", append(attrs, slog.Any("error", err))...)
	case res.OutboxDeleted+res.InboxDeleted > 0:
		log.InfoContext(ctx, "retention run deleted rows", attrs...)
	default:
		log.DebugContext(ctx, "retention run found nothing to delete", attrs...)
	}
	if c.cfg.OnRun != nil {
		c.cfg.OnRun(OnRunParams{Result: res, Err: err})
	}
}

// isNil reports whether v is nil or a nil pointer in an interface.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	return rv.Kind() == reflect.Pointer && rv.IsNil()
}

// jitter returns d ±10%.
func jitter(d time.Duration) time.Duration {
	spread := int64(d) / 5
	if spread <= 0 {
		return d
	}
	return d - time.Duration(spread/2) + time.Duration(rand.Int64N(spread+1))
}
