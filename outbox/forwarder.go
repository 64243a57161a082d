package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/internal/ctxtime"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Defaults of ForwarderConfig.
const (
	DefaultBatchSize       = 2000
	DefaultPollInterval    = 2 * time.Second
	DefaultMaxAttempts     = 10
	DefaultMinBackoff      = time.Second
	DefaultMaxBackoff      = 5 * time.Minute
	DefaultShutdownTimeout = 10 * time.Second
)

// maxOutageBackoff caps the forwarder's own backoff after a failed batch
// (database down, publisher down), so it notices a recovery within this
// time even when MaxBackoff is long.
const maxOutageBackoff = 30 * time.Second

// ErrAlreadyRunning is returned by Run while another Run of the same
// forwarder is active.
var ErrAlreadyRunning = errors.New("outbox: forwarder is already running")

// ForwarderConfig configures a [Forwarder]. The zero value is valid: every
// field has a default.
type ForwarderConfig struct {
	// BatchSize is the most rows claimed and published per batch.
	// Optional; default DefaultBatchSize (2000). A batch is also the most
	// events published twice after a crash.
	BatchSize int
	// PollInterval is how long the forwarder waits for a wake-up (a commit
	// in this process, or a PostgreSQL notification) before it looks for
	// rows anyway. Optional; default DefaultPollInterval (2s).
	PollInterval time.Duration
	// MaxAttempts is the number of failed publish attempts after which a
	// row is parked as failed. While the publisher is considered down (a
	// batch in which nothing was published and rows of two or more keys
	// failed, or a publish failed with ErrPublisherUnavailable, until the
	// next successful publish) rows are not parked:
	// they keep retrying at MaxBackoff, so an outage never needs an
	// operator. Optional; default DefaultMaxAttempts (10).
	MaxAttempts int
	// MinBackoff is the delay after a row's first failed attempt; it
	// doubles with each further attempt, up to MaxBackoff, jittered by
	// ±20%. It is also the forwarder's first delay after a failed batch
	// (database error, or publisher outage: see BatchInfo.Outage), which
	// doubles per failed batch up to MaxBackoff but at most 30s. Optional;
	// default DefaultMinBackoff (1s).
	MinBackoff time.Duration
	// MaxBackoff caps the delays above. Optional; default DefaultMaxBackoff
	// (5m).
	MaxBackoff time.Duration
	// Topics, when not empty, restricts the forwarder to these topics.
	// Optional; default all topics.
	Topics []string
	// ShutdownTimeout bounds how long Run waits for the batch in flight
	// after its context ends; past it the batch is released for redelivery.
	// Optional; default DefaultShutdownTimeout (10s).
	ShutdownTimeout time.Duration
	// Logger receives the forwarder's logs. Optional; default slog.Default().
	Logger *slog.Logger
	// OnBatch is called after every batch that claimed rows, for metrics.
	// It must not block. Optional.
	OnBatch func(BatchInfo)
	// TracerProvider traces publishing: a producer span per message that
	// carries a trace context from Emit, child of the command's span.
	// Optional; default otel.GetTracerProvider() (a no-op until the
	// application sets one).
	TracerProvider trace.TracerProvider
	// MeterProvider receives the relay metrics (see docs/operations.md).
	// Optional; default otel.GetMeterProvider() (a no-op until the
	// application sets one).
	MeterProvider metric.MeterProvider
	// Propagator reads the trace context stored at Emit time and writes
	// the publish span's context into the published message's metadata.
	// Optional; default otel.GetTextMapPropagator().
	Propagator propagation.TextMapPropagator
	// PublishCompressed publishes compressed rows (see
	// EncoderConfig.Compressor) as stored, with their
	// MetadataContentEncoding, for consumers that decompress themselves
	// (handlers.Registry does). Optional; default false: the forwarder
	// decompresses each compressed row and publishes the original payload
	// without the metadata key; a row that does not decompress is parked
	// with the reason.
	PublishCompressed bool
	// Compressors are the custom compressors the encoder may have used, in
	// addition to the built-in Gzip and Zstd. Optional.
	Compressors []Compressor
}

// BatchInfo describes one batch for ForwarderConfig.OnBatch.
type BatchInfo struct {
	// Claimed is the number of rows claimed.
	Claimed int
	// Published is the number of rows published and marked delivered.
	Published int
	// Failed is the number of rows whose publish failed (retried later).
	Failed int
	// Parked is the number of rows parked as failed in this batch.
	Parked int
	// Outage is true when nothing could be published and the publisher is
	// considered down (rows of two or more keys failed, or a publish failed
	// with ErrPublisherUnavailable): the forwarder then
	// backs off as a whole before its next batch. A batch in which only
	// one key failed is no outage: that key waits for its retry time and
	// the others go on at once.
	Outage bool
	// PublishErr is the last publish error of an outage batch.
	PublishErr error
	// Duration is the time from claim to finish.
	Duration time.Duration
	// Err is the batch's database error (claim or finish), if any.
	Err error
}

// Validate reports every problem with the config.
func (c ForwarderConfig) Validate() error {
	var errs []error
	neg := func(name string, v int64) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%w: %s is negative (use 0 for the default)", ErrInvalidConfig, name))
		}
	}
	neg("BatchSize", int64(c.BatchSize))
	neg("PollInterval", int64(c.PollInterval))
	neg("MaxAttempts", int64(c.MaxAttempts))
	neg("MinBackoff", int64(c.MinBackoff))
	neg("MaxBackoff", int64(c.MaxBackoff))
	neg("ShutdownTimeout", int64(c.ShutdownTimeout))
	if c.MinBackoff > 0 && c.MaxBackoff > 0 && c.MinBackoff > c.MaxBackoff {
		errs = append(errs, fmt.Errorf("%w: MinBackoff %v is larger than MaxBackoff %v", ErrInvalidConfig, c.MinBackoff, c.MaxBackoff))
	}
	for i, t := range c.Topics {
		if t == "" {
			errs = append(errs, fmt.Errorf("%w: Topics[%d] is empty", ErrInvalidConfig, i))
		}
	}
	return errors.Join(errs...)
}

func (c *ForwarderConfig) setDefaults() {
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = max(DefaultMaxBackoff, c.MinBackoff)
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = min(DefaultMinBackoff, c.MaxBackoff)
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	if c.Propagator == nil {
		c.Propagator = otel.GetTextMapPropagator()
	}
}

// Forwarder relays committed outbox rows to a Watermill publisher: it claims
// batches, publishes them per topic with Publish(topic, msgs...), and marks
// them delivered. Per partition key, rows are published in ID order, also
// with several forwarders on one table (PostgreSQL). A row that fails is
// retried with exponential backoff and parked after MaxAttempts; its key's
// later rows wait behind it, other keys go on.
type Forwarder struct {
	store RelayStore
	cfg   ForwarderConfig
	log   *slog.Logger
	tel   *telemetry
	wake  chan struct{}
	// woken tells what sent the wake-ups not yet taken from wake (see
	// takeWake); lastWake is when Wake was last called, in nanoseconds
	// since epoch (monotonic).
	woken    atomic.Uint32
	lastWake atomic.Int64
	epoch    time.Time
	// notifiedInVain is set when the last claim made for a notification
	// alone found nothing. Used by Run's goroutine only.
	notifiedInVain bool
	running        atomic.Bool
	// eng publishes the batches and decides retries and parking.
	eng *Engine
}

// NewForwarder returns a forwarder from store to pub.
func NewForwarder(store RelayStore, pub message.Publisher, cfg ForwarderConfig) (*Forwarder, error) {
	var errs []error
	if store == nil {
		errs = append(errs, fmt.Errorf("%w: missing store (try gormstore.New)", ErrInvalidConfig))
	}
	errs = append(errs, checkEngine(pub, cfg)...)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	eng, err := newEngine(pub, cfg)
	if err != nil {
		return nil, fmt.Errorf("outbox: forwarder metrics: %w", err)
	}
	return &Forwarder{
		store: store,
		cfg:   cfg,
		log:   cfg.Logger.With("component", "txoutbox.forwarder"),
		tel:   eng.tel,
		wake:  make(chan struct{}, 1),
		epoch: time.Now(),
		eng:   eng,
	}, nil
}

// Wake makes a waiting forwarder look for rows at once. It never blocks.
// Wire it to the transactional middleware's AfterCommit so events committed
// in this process are relayed without waiting for a poll.
func (f *Forwarder) Wake() {
	f.lastWake.Store(int64(time.Since(f.epoch)))
	f.signal(wokeToClaim)
}

// What sent a wake-up.
const (
	wokeToClaim    uint32 = 1 << iota // Wake, or a listener that reconnected: claim at once
	wokeByListener                    // a notification: a commit somewhere
)

func (f *Forwarder) signal(by uint32) {
	f.woken.Or(by)
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// takeWake is called with a wake-up just taken from f.wake. It tells
// whether to claim at once or to ask HasDue (one statement) first, and
// whether the wake-up came from a notification alone. Asking first is
// always safe; claiming at once saves a round trip. A notification alone
// asks first:
//   - while Wake is in use (called within the last PollInterval): a commit
//     in a process that calls Wake from AfterCommit is announced twice, by
//     Wake, which claims its rows, and moments later by its notification,
//     which would claim again and find nothing;
//   - after a claim made for a notification alone found nothing: another
//     forwarder on the table took the rows, as it will again.
func (f *Forwarder) takeWake() (claim, notified bool) {
	by := f.woken.Swap(0)
	if by&wokeToClaim != 0 {
		return true, false
	}
	if by&wokeByListener == 0 {
		return false, false // taken with an earlier wake-up
	}
	last := f.lastWake.Load()
	wakeUnused := last == 0 || time.Since(f.epoch)-time.Duration(last) > f.cfg.PollInterval
	return wakeUnused && !f.notifiedInVain, true
}

// Stats reports what is waiting in the outbox.
func (f *Forwarder) Stats(ctx context.Context) (Stats, error) {
	return f.store.Stats(ctx)
}

// Run relays until ctx ends, then finishes or releases the batch in flight
// within ShutdownTimeout and returns nil. Errors of the database or the
// publisher do not stop it: it logs them, backs off and goes on.
func (f *Forwarder) Run(ctx context.Context) error {
	if !f.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer f.running.Store(false)
	if stop, err := f.tel.observeStats(f.store.Stats); err == nil {
		defer stop()
	} else {
		f.log.Warn("outbox relay: cannot register outbox gauges", "error", err)
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	listenCtx, stopListen := context.WithCancel(ctx)
	defer stopListen()
	if l, ok := f.store.(Listener); ok {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.listen(listenCtx, l)
		}()
	}

	dueChecker, _ := f.store.(DueChecker)
	var failures int  // consecutive failed batches
	polled := false   // woken by the poll timer, or after a short batch: ask HasDue first
	notified := false // woken by a notification alone
	var next Claim    // the next batch, claimed while the last one was publishing
	defer func() { f.release(ctx, next) }()
	for {
		if ctx.Err() != nil {
			return nil
		}
		if next == nil && polled && dueChecker != nil {
			if due, err := dueChecker.HasDue(ctx, f.cfg.Topics); err == nil && !due {
				if !f.wait(ctx, &polled, &notified) {
					return nil
				}
				continue
			}
		}
		var info BatchInfo
		claimed := next == nil
		info, next = f.batch(ctx, next)
		if claimed && notified && info.Err == nil {
			f.notifiedInVain = info.Claimed == 0
		}
		notified = false
		switch {
		case info.Err != nil || info.Outage:
			f.release(ctx, next)
			next = nil
			failures++
			f.logFailure(failures, info)
			if !ctxtime.Sleep(ctx, min(backoff(&f.cfg, failures), maxOutageBackoff)) {
				return nil
			}
			continue
		case failures > 0:
			f.log.Info("outbox relay recovered", "failed_batches", failures)
			failures = 0
		}
		switch {
		case next != nil, info.Claimed >= f.cfg.BatchSize:
			polled = false // more is waiting
			continue
		case info.Claimed > 0:
			// A short batch took what was due when it was claimed. If a
			// commit woke the forwarder meanwhile, claim at once; if not,
			// ask HasDue (one statement) before claiming (six).
			select {
			case <-f.wake:
				var claim bool
				claim, notified = f.takeWake()
				polled = !claim
			default:
				polled = true
			}
			continue
		}
		if !f.wait(ctx, &polled, &notified) {
			return nil
		}
	}
}

// release gives a claim that will not be processed back, if there is one.
func (f *Forwarder) release(ctx context.Context, c Claim) {
	if c == nil {
		return
	}
	relCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if err := c.Release(relCtx); err != nil {
		f.log.Warn("outbox relay: cannot release a claimed batch; its rows come back when the connection closes", "rows", len(c.Rows()), "error", err)
	}
}

// wait waits for a wake-up or the poll interval. polled tells whether to
// ask HasDue before claiming, notified whether a notification alone woke
// it (see takeWake). It returns false when ctx ends.
func (f *Forwarder) wait(ctx context.Context, polled, notified *bool) bool {
	timer := time.NewTimer(f.cfg.PollInterval)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-f.wake:
		var claim bool
		claim, *notified = f.takeWake()
		*polled = !claim
	case <-timer.C:
		*polled, *notified = true, false
	}
	return true
}

func (f *Forwarder) logFailure(n int, info BatchInfo) {
	msg, err := "outbox relay: publisher failing, backing off", info.PublishErr
	if info.Err != nil {
		msg, err = "outbox relay: batch failed, backing off", info.Err
	}
	// Log the first failure, then every 10th, so an outage cannot flood the log.
	if n == 1 || n%10 == 0 {
		f.log.Warn(msg, "error", err, "consecutive", n, "next_try_in", min(backoff(&f.cfg, n), maxOutageBackoff))
	}
}

func (f *Forwarder) listen(ctx context.Context, l Listener) {
	for attempt := 1; ; attempt++ {
		var listened atomic.Bool
		err := l.Listen(ctx, func() {
			listened.Store(true)
			f.signal(wokeByListener)
		})
		if ctx.Err() != nil || errors.Is(err, ErrListenUnsupported) {
			return
		}
		if listened.Load() {
			// The listener was up: a later drop starts the backoff afresh.
			attempt = 1
		}
		if attempt == 1 || attempt%10 == 0 {
			f.log.Warn("outbox relay: notification listener stopped; polling until it reconnects", "error", err, "attempt", attempt)
		}
		if !ctxtime.Sleep(ctx, backoff(&f.cfg, attempt)) {
			return
		}
		f.signal(wokeToClaim) // catch up on what was committed while not listening
	}
}

// batch publishes and finishes one batch: claim, or a new claim when
// claim is nil. The batch runs in its own goroutine with a context that
// outlives ctx by ShutdownTimeout, so a shutdown lets it finish; if it does
// not finish in time it is released. While a full batch publishes, or
// when a commit wakes the forwarder during a short one, batch claims the
// next one from the other keys and returns it (nil if nothing was
// claimed), so the database work of one batch overlaps the publishing of
// the other.
func (f *Forwarder) batch(ctx context.Context, claim Claim) (BatchInfo, Claim) {
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()

	if claim == nil {
		var err error
		claim, err = f.store.Claim(workCtx, ClaimParams{Limit: f.cfg.BatchSize, Topics: f.cfg.Topics})
		if err != nil {
			return BatchInfo{Err: fmt.Errorf("claim: %w", err)}, nil
		}
	}
	if len(claim.Rows()) == 0 {
		_ = claim.Release(workCtx)
		return BatchInfo{}, nil
	}

	var (
		mu        sync.Mutex
		abandoned bool
	)
	done := make(chan BatchInfo, 1)
	go func() {
		done <- f.process(workCtx, claim, func() bool {
			mu.Lock()
			if abandoned {
				mu.Unlock()
				return false
			}
			return true // holding mu
		}, mu.Unlock)
	}()

	// Claim the next batch now if this one is full, or as soon as a
	// commit wakes the forwarder while this one is in flight.
	var next Claim
	wake := f.wake
	if len(claim.Rows()) >= f.cfg.BatchSize {
		next = f.prefetch(ctx, claim.Rows())
		wake = nil
	}
	for waiting := true; waiting; {
		select {
		case info := <-done:
			return info, next
		case <-wake:
			if now, _ := f.takeWake(); now {
				next = f.prefetch(ctx, claim.Rows())
				wake = nil
			} // else the end of a short batch asks HasDue
		case <-ctx.Done():
			waiting = false
		}
	}
	f.release(ctx, next)
	timer := time.NewTimer(f.cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case info := <-done:
		return info, nil
	case <-timer.C:
	}
	mu.Lock()
	abandoned = true
	mu.Unlock()
	f.release(ctx, claim)
	f.log.Warn("outbox relay: batch not finished within ShutdownTimeout; released for redelivery", "rows", len(claim.Rows()))
	return BatchInfo{Claimed: len(claim.Rows()), Err: errors.New("shutdown timeout")}, nil
}

// prefetch claims the batch after rows, skipping the keys of rows, which
// are still held. It returns nil when nothing was claimed; an error is
// left for the next regular claim to meet and report.
func (f *Forwarder) prefetch(ctx context.Context, rows []Row) Claim {
	var keys []string
	seen := map[string]bool{}
	for _, r := range rows {
		if r.PartitionKey != "" && !seen[r.PartitionKey] {
			seen[r.PartitionKey] = true
			keys = append(keys, r.PartitionKey)
		}
	}
	next, err := f.store.Claim(ctx, ClaimParams{Limit: f.cfg.BatchSize, Topics: f.cfg.Topics, ExcludeKeys: keys})
	if err != nil {
		return nil
	}
	if len(next.Rows()) == 0 {
		f.release(ctx, next)
		return nil
	}
	return next
}

// process publishes a claimed batch and finishes it. lock reports whether
// the batch still belongs to this goroutine (holding the lock if so).
func (f *Forwarder) process(ctx context.Context, claim Claim, lock func() bool, unlock func()) BatchInfo {
	start := time.Now()
	rows := claim.Rows()
	out := f.eng.Publish(rows)
	delivered, failures := out.Delivered, out.Failures
	info := BatchInfo{
		Claimed:    len(rows),
		Published:  len(delivered),
		Failed:     out.Failed,
		Parked:     out.Parked,
		Outage:     out.Outage,
		PublishErr: out.PublishErr,
	}

	if !lock() {
		return info // abandoned at shutdown; already released
	}
	defer unlock()
	var err error
	if len(delivered) == 0 && len(failures) == 0 {
		err = claim.Release(ctx)
	} else {
		err = claim.Finish(ctx, delivered, failures)
	}
	info.Duration = time.Since(start)
	if err != nil {
		info.Err = fmt.Errorf("finish: %w", err)
		info.Published = 0
	}
	if err == nil && len(failures) > 0 {
		byID := make(map[int64]Row, len(failures))
		for _, r := range rows {
			byID[r.ID] = r
		}
		for _, fl := range failures {
			r := byID[fl.ID]
			attrs := []any{"id", fl.ID, "topic", r.Topic, "partition_key", r.PartitionKey,
				"message_uuid", r.UUID, "attempts", r.Attempts + 1, "error", fl.Error}
			if fl.Park {
				f.log.Error("outbox relay: row parked as failed", attrs...)
			} else {
				f.log.Debug("outbox relay: publish failed; will retry", append(attrs, "retry_after", fl.RetryAfter)...)
			}
		}
	}
	if err == nil {
		f.tel.recordBatch(ctx, info, rows, delivered, failures)
	}
	if f.log.Enabled(ctx, slog.LevelDebug) {
		f.log.LogAttrs(ctx, slog.LevelDebug, "outbox relay: batch",
			slog.Int("claimed", info.Claimed), slog.Int("published", info.Published),
			slog.Int("failed", info.Failed), slog.Int("parked", info.Parked),
			slog.Bool("outage", info.Outage), slog.Duration("duration", info.Duration),
			slog.Any("error", info.Err))
	}
	if f.cfg.OnBatch != nil {
		f.cfg.OnBatch(info)
	}
	return info
}
