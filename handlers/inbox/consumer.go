package inbox

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/outbox"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"gorm.io/gorm"
)

// Defaults of [ConsumerConfig].
const (
	// DefaultWorkers is the number of workers of a Consumer.
	DefaultWorkers = 4
	// DefaultBatchSize is the most messages a worker processes in one
	// transaction.
	DefaultBatchSize = 100
	// MaxBatchSize bounds ConsumerConfig.BatchSize (one statement records
	// a batch's inbox rows).
	MaxBatchSize = 10000
	// DefaultMaxAttempts is how many times the handler may fail on a
	// message before the message is parked.
	DefaultMaxAttempts = 5
	// DefaultRetryBackoff is the wait before a failed message's second
	// attempt; it doubles with each further attempt.
	DefaultRetryBackoff = 50 * time.Millisecond
	// DefaultMaxRetryBackoff caps the wait between attempts, and between
	// retries of a batch whose transaction failed.
	DefaultMaxRetryBackoff = 5 * time.Second
	// DefaultRedrivePoll is how often a Consumer looks for failed messages
	// marked for retry.
	DefaultRedrivePoll = time.Second
	// DefaultStallAfter is how long a Consumer may make no progress while
	// messages wait before Health reports it stalled.
	DefaultStallAfter = 30 * time.Second
)

// KeyPolicy says what happens to the later messages of a partition key
// after one of its messages is parked.
type KeyPolicy int

const (
	// KeyWait holds the key's later messages behind the parked one: they
	// are recorded in the failed table as held (and acked) and processed,
	// in order, once the parked message is retried successfully or
	// discarded. The default: per-key order is kept.
	KeyWait KeyPolicy = iota
	// KeyContinue processes the key's later messages as usual: the parked
	// message, when retried, is applied after them.
	KeyContinue
)

// UnknownPolicy says what happens to a message whose event the handler
// does not know (its error wraps handlers.ErrUnknownEvent).
type UnknownPolicy int

const (
	// UnknownPark parks the message at once, without retries: it is kept
	// for a consumer version that knows the event (retry it after
	// deploying it). The default.
	UnknownPark UnknownPolicy = iota
	// UnknownSkip acks the message as processed and counts it
	// (txoutbox.inbox.skipped): for consumers of topics that carry events
	// they do not care about.
	UnknownSkip
)

// Errors of the [Consumer].
var (
	// ErrPermanent marks a handler error that no retry can fix: the message
	// is parked at once. Wrap an error with Permanent.
	ErrPermanent = errors.New("inbox: permanent failure")
	// ErrStalled is returned by Consumer.Health when the consumer has made
	// no progress for ConsumerConfig.StallAfter while messages wait.
	ErrStalled = errors.New("inbox: consumer stalled")
	// ErrNotRunning is returned by Consumer.Health before Run starts and
	// after it returned.
	ErrNotRunning = errors.New("inbox: consumer not running")
)

// Permanent marks err as permanent: a Consumer parks the message at once
// instead of retrying it. errors.Is(Permanent(err), err) holds.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrPermanent, err)
}

// ConsumerConfig configures a [Consumer]. Name, Topics, Subscriber and
// Handler are required.
type ConsumerConfig struct {
	// Name names the consumer in the inbox and failed tables: stable, the
	// same in all its instances. Required.
	Name string
	// Topics are the topics consumed. Required.
	Topics []string
	// Subscriber delivers the messages. It is not closed by the consumer.
	// Batches and workers gain only with a subscriber that hands over the
	// next message before the previous one is acked (see the package
	// documentation); with one that does not, each batch is one message.
	// Required.
	Subscriber message.Subscriber
	// Handler processes one message. It runs in the batch's transaction:
	// reach it with outbox.Tx(msg.Context()). An error rolls back the
	// handler's writes only (the batch runs again with a savepoint per
	// message, so the handlers before it in the batch run a second time:
	// only the committed run counts, as with any retry); the message is
	// retried (see MaxAttempts), or parked at
	// once when the error wraps ErrPermanent, handlers.ErrDecode or
	// handlers.ErrUnknownEvent (see UnknownEvents). Handlers of different
	// partition keys run concurrently. Required.
	Handler message.NoPublishHandlerFunc
	// Workers is the number of workers. Messages of one partition key
	// (metadata "partition_key") always go to the same worker, in the
	// order they arrive; messages without a key are spread over all.
	// Optional; default DefaultWorkers (4).
	Workers int
	// BatchSize is the most messages a worker processes in one
	// transaction; 1 processes every message in its own. Optional;
	// default DefaultBatchSize (100), at most MaxBatchSize.
	BatchSize int
	// BatchWait is the longest a worker waits for a batch to fill before
	// processing the messages it has. With 0 a batch is what has arrived
	// while the previous batch ran: batches grow with the load, and a
	// message never waits for others. Optional; default 0.
	BatchWait time.Duration
	// MaxAttempts is how many times the handler may fail on a message
	// before it is parked. Optional; default DefaultMaxAttempts (5).
	MaxAttempts int
	// RetryBackoff is the wait before a failed message's next attempt,
	// doubled per attempt up to MaxRetryBackoff. The messages of its key
	// wait; other keys go on. Optional; default DefaultRetryBackoff
	// (50ms).
	RetryBackoff time.Duration
	// MaxRetryBackoff caps the wait between attempts and between retries
	// of a batch whose transaction failed (the database is away: nothing
	// is charged to the messages). Optional; default
	// DefaultMaxRetryBackoff (5s).
	MaxRetryBackoff time.Duration
	// AfterPark says what happens to a key's later messages once one of
	// its messages is parked. Optional; default KeyWait.
	AfterPark KeyPolicy
	// UnknownEvents says what happens to a message whose event the handler
	// does not know. Optional; default UnknownPark.
	UnknownEvents UnknownPolicy
	// RedrivePoll is how often the consumer looks in the failed table for
	// messages marked for retry and held messages that may go on.
	// Optional; default DefaultRedrivePoll (1s).
	RedrivePoll time.Duration
	// StallAfter is how long the consumer may make no progress while
	// messages wait before Health reports ErrStalled. Optional; default
	// DefaultStallAfter (30s).
	StallAfter time.Duration
	// Logger receives the consumer's logs. Optional; default
	// slog.Default().
	Logger *slog.Logger
	// MeterProvider receives the consumer metrics (see
	// docs/operations.md). Optional; default otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
}

// Validate reports every problem with the config.
func (c ConsumerConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if c.Name == "" {
		errs = append(errs, fmt.Errorf("%w: ConsumerConfig.Name is required", ErrNoConsumer))
	}
	if len(c.Topics) == 0 {
		bad("ConsumerConfig.Topics is empty")
	}
	for i, t := range c.Topics {
		if t == "" {
			bad("ConsumerConfig.Topics[%d] is empty", i)
		}
	}
	if c.Subscriber == nil {
		bad("ConsumerConfig.Subscriber is required")
	}
	if c.Handler == nil {
		bad("ConsumerConfig.Handler is required")
	}
	if c.Workers < 0 || c.Workers > 1024 {
		bad("Workers %d: must be 0 (default %d) to 1024", c.Workers, DefaultWorkers)
	}
	if c.BatchSize < 0 || c.BatchSize > MaxBatchSize {
		bad("BatchSize %d: must be 0 (default %d) to %d", c.BatchSize, DefaultBatchSize, MaxBatchSize)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"BatchWait", c.BatchWait}, {"RetryBackoff", c.RetryBackoff}, {"MaxRetryBackoff", c.MaxRetryBackoff}, {"RedrivePoll", c.RedrivePoll}, {"StallAfter", c.StallAfter}} {
		if d.v < 0 {
			bad("%s %v is negative (use 0 for the default)", d.name, d.v)
		}
	}
	if c.MaxAttempts < 0 {
		bad("MaxAttempts %d is negative (use 0 for the default %d)", c.MaxAttempts, DefaultMaxAttempts)
	}
	if c.AfterPark != KeyWait && c.AfterPark != KeyContinue {
		bad("AfterPark %d: use KeyWait or KeyContinue", c.AfterPark)
	}
	if c.UnknownEvents != UnknownPark && c.UnknownEvents != UnknownSkip {
		bad("UnknownEvents %d: use UnknownPark or UnknownSkip", c.UnknownEvents)
	}
	return errors.Join(errs...)
}

func (c ConsumerConfig) withDefaults() ConsumerConfig {
	c.Workers = cmp.Or(c.Workers, DefaultWorkers)
	c.BatchSize = cmp.Or(c.BatchSize, DefaultBatchSize)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, DefaultMaxAttempts)
	c.RetryBackoff = cmp.Or(c.RetryBackoff, DefaultRetryBackoff)
	c.MaxRetryBackoff = max(cmp.Or(c.MaxRetryBackoff, DefaultMaxRetryBackoff), c.RetryBackoff)
	c.RedrivePoll = cmp.Or(c.RedrivePoll, DefaultRedrivePoll)
	c.StallAfter = cmp.Or(c.StallAfter, DefaultStallAfter)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	return c
}

// ConsumerStats counts what a Consumer did since it was created.
type ConsumerStats struct {
	// Processed counts messages whose handler committed.
	Processed int64
	// Duplicates counts messages acked because the inbox had them.
	Duplicates int64
	// Failures counts failed handler attempts.
	Failures int64
	// Parked counts messages recorded as failed in the failed table.
	Parked int64
	// Held counts messages recorded as held behind a parked one.
	Held int64
	// Skipped counts messages with an unknown event acked under
	// UnknownSkip.
	Skipped int64
	// InFlight is the number of messages received and not acked yet.
	InFlight int64
	// LastProgress is when a batch last committed (or Run started).
	LastProgress time.Time
}

// Consumer consumes topics into the inbox's database: batches of messages
// in one transaction each, every message's handler in a savepoint of its
// own, acked after the commit; W workers in parallel, each partition key on
// one of them, in order; a message that keeps failing is parked in the
// failed table and acked, so the consumer goes on. Create it with
// Inbox.NewConsumer and start it with Run. See the package documentation.
type Consumer struct {
	in      *Inbox
	cfg     ConsumerConfig
	workers []*worker
	tel     *consumerTelemetry

	running      atomic.Bool
	subscribed   chan struct{} // closed once Run has subscribed
	subscribeOne sync.Once
	inFlight     atomic.Int64
	lastProgress atomic.Int64 // Unix nanoseconds

	processed, duplicates, failures, parked, held, skipped atomic.Int64
}

// NewConsumer returns a consumer that records its messages in the inbox.
// The inbox and failed tables must exist (Migrate).
func (in *Inbox) NewConsumer(cfg ConsumerConfig) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	tel, err := newConsumerTelemetry(cfg.MeterProvider, cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("inbox: consumer %s: metrics: %w", cfg.Name, err)
	}
	c := &Consumer{in: in, cfg: cfg, tel: tel, subscribed: make(chan struct{})}
	for range cfg.Workers {
		c.workers = append(c.workers, &worker{c: c, in: make(chan *item, cfg.BatchSize)})
	}
	if err := tel.observe(c); err != nil {
		return nil, fmt.Errorf("inbox: consumer %s: metrics: %w", cfg.Name, err)
	}
	return c, nil
}

// Name returns the consumer's name.
func (c *Consumer) Name() string { return c.cfg.Name }

// Stats returns the consumer's counters.
func (c *Consumer) Stats() ConsumerStats {
	return ConsumerStats{
		Processed: c.processed.Load(), Duplicates: c.duplicates.Load(), Failures: c.failures.Load(),
		Parked: c.parked.Load(), Held: c.held.Load(), Skipped: c.skipped.Load(),
		InFlight: c.inFlight.Load(), LastProgress: time.Unix(0, c.lastProgress.Load()),
	}
}

// Running returns a channel closed once Run has subscribed to every topic
// (the first time): from then on messages published reach the consumer,
// also on a broker that keeps nothing for topics without subscribers (a
// GoChannel).
func (c *Consumer) Running() <-chan struct{} { return c.subscribed }

// Health returns nil while the consumer runs and makes progress:
// ErrNotRunning before Run has subscribed and after it returned, ErrStalled when no batch
// has committed for ConsumerConfig.StallAfter while messages wait (the
// database is away, or a handler blocks).
func (c *Consumer) Health() error {
	if !c.running.Load() {
		return fmt.Errorf("%w: %s", ErrNotRunning, c.cfg.Name)
	}
	select {
	case <-c.subscribed:
	default:
		return fmt.Errorf("%w: %s is subscribing", ErrNotRunning, c.cfg.Name)
	}
	n := c.inFlight.Load()
	since := time.Since(time.Unix(0, c.lastProgress.Load()))
	if n > 0 && since > c.cfg.StallAfter {
		return fmt.Errorf("%w: %s has made no progress for %s with %d messages waiting", ErrStalled, c.cfg.Name, since.Round(time.Second), n)
	}
	return nil
}

// Run subscribes to the topics and consumes until ctx ends, then finishes
// the batches in progress, nacks the messages not processed yet and
// returns nil. It returns an error when a subscription fails or ends
// before ctx. A Consumer runs once at a time.
func (c *Consumer) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: consumer %s is already running", ErrInvalidConfig, c.cfg.Name)
	}
	defer c.running.Store(false)
	c.progress()
	// The subscriptions outlive the workers, so that the acks and nacks
	// they send when they stop still reach the broker.
	subCtx, endSubscriptions := context.WithCancel(context.WithoutCancel(ctx))
	defer endSubscriptions()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	chans := make([]<-chan *message.Message, len(c.cfg.Topics))
	for i, topic := range c.cfg.Topics {
		ch, err := c.cfg.Subscriber.Subscribe(subCtx, topic)
		if err != nil {
			return fmt.Errorf("inbox: consumer %s: subscribe to %s: %w", c.cfg.Name, topic, err)
		}
		chans[i] = ch
	}
	c.subscribeOne.Do(func() { close(c.subscribed) })
	var wg sync.WaitGroup
	errc := make(chan error, len(chans))
	for i, ch := range chans {
		wg.Go(func() { c.intake(ctx, c.cfg.Topics[i], ch, errc) })
	}
	for _, w := range c.workers {
		wg.Go(func() { w.run(ctx) })
	}
	wg.Go(func() { c.redrive(ctx) })
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	wg.Wait()
	for _, w := range c.workers {
		w.drainQueue()
	}
	return runErr
}

// progress records that the consumer made progress now.
func (c *Consumer) progress() { c.lastProgress.Store(time.Now().UnixNano()) }

// intake hands a subscription's messages to the workers, by key.
func (c *Consumer) intake(ctx context.Context, topic string, ch <-chan *message.Message, errc chan<- error) {
	for {
		select {
		case msg, ok := <-ch:
			if !ok {
				if ctx.Err() == nil {
					errc <- fmt.Errorf("inbox: consumer %s: the subscription to %s ended", c.cfg.Name, topic)
				}
				return
			}
			it := newLiveItem(msg, topic)
			c.inFlight.Add(1)
			select {
			case c.workerFor(it.orderKey).in <- it:
			case <-ctx.Done():
				msg.Nack()
				c.inFlight.Add(-1)
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

func (c *Consumer) workerFor(orderKey string) *worker {
	if len(c.workers) == 1 {
		return c.workers[0]
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(orderKey))
	return c.workers[h.Sum32()%uint32(len(c.workers))]
}

// backoff returns the wait after the n-th failure (n ≥ 1).
func (c *Consumer) backoff(n int) time.Duration {
	d := c.cfg.RetryBackoff
	for i := 1; i < n && d < c.cfg.MaxRetryBackoff; i++ {
		d *= 2
	}
	return min(d, c.cfg.MaxRetryBackoff)
}

// item is a message waiting in a worker: one received from the broker
// (live) or one stored in the failed table (stored).
type item struct {
	msg   *message.Message
	topic string
	key   string // partition key, "" when none
	// orderKey is what orders the item: its key, or its UUID when it has
	// none.
	orderKey string
	// parkErr, when set, parks a live message without running the handler.
	parkErr   error
	attempts  int
	notBefore time.Time
	done      bool

	stored   *FailedMessage  // set for a stored item
	finished *sync.WaitGroup // a stored item's redrive round
}

func newLiveItem(msg *message.Message, topic string) *item {
	it := &item{msg: msg, topic: topic, key: msg.Metadata.Get(outbox.MetadataPartitionKey)}
	if msg.UUID == "" {
		// It cannot be deduplicated: park it under a UUID of its own.
		msg.UUID = "no-uuid-" + watermill.NewUUID()
		it.parkErr = Permanent(ErrNoMessageUUID)
	}
	it.orderKey = it.key
	if it.key == "" {
		it.orderKey = "\x00" + msg.UUID
	}
	return it
}

func newStoredItem(f FailedMessage, finished *sync.WaitGroup) *item {
	it := &item{msg: f.Message(), topic: f.Topic, key: f.PartitionKey, attempts: f.Attempts, stored: &f, finished: finished}
	it.orderKey = it.key
	if it.key == "" {
		it.orderKey = "\x00" + f.UUID
	}
	return it
}

// finish is called once per item when it leaves its worker.
func (c *Consumer) finish(it *item, ack bool) {
	it.done = true
	c.inFlight.Add(-1)
	if it.stored != nil {
		it.finished.Done()
		return
	}
	if ack {
		it.msg.Ack()
	} else {
		it.msg.Nack()
	}
}

// worker processes the items of its keys, in batches.
type worker struct {
	c       *Consumer
	in      chan *item
	pending []*item
	// failures counts consecutive batches whose transaction failed.
	failures int
	// savepoints counts the batches still to run with savepoints.
	savepoints int
}

func (w *worker) maxPending() int { return 4 * w.c.cfg.BatchSize }

func (w *worker) run(ctx context.Context) {
	defer w.abandon()
	for {
		if len(w.pending) == 0 {
			select {
			case it := <-w.in:
				w.pending = append(w.pending, it)
			case <-ctx.Done():
				return
			}
		}
		w.fill(ctx)
		if ctx.Err() != nil {
			return
		}
		batch, wait := w.pick(time.Now())
		if len(batch) == 0 {
			w.sleep(ctx, wait)
			continue
		}
		w.process(ctx, batch)
		w.pending = slices.DeleteFunc(w.pending, func(it *item) bool { return it.done })
	}
}

// fill takes what has arrived, and waits up to BatchWait for a full batch.
func (w *worker) fill(ctx context.Context) {
	for len(w.pending) < w.maxPending() {
		select {
		case it := <-w.in:
			w.pending = append(w.pending, it)
			continue
		default:
		}
		break
	}
	if w.c.cfg.BatchWait <= 0 || len(w.pending) >= w.c.cfg.BatchSize {
		return
	}
	timer := time.NewTimer(w.c.cfg.BatchWait)
	defer timer.Stop()
	for len(w.pending) < w.c.cfg.BatchSize {
		select {
		case it := <-w.in:
			w.pending = append(w.pending, it)
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// sleep waits for d, a new item (when there is room) or ctx.
func (w *worker) sleep(ctx context.Context, d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	in := w.in
	if len(w.pending) >= w.maxPending() {
		in = nil
	}
	select {
	case it := <-in:
		w.pending = append(w.pending, it)
	case <-timer.C:
	case <-ctx.Done():
	}
}

// pick returns the next batch: pending items in order, up to BatchSize,
// leaving out a key's items from its first one that is not due yet. With
// nothing due it returns how long until the first item is.
func (w *worker) pick(now time.Time) ([]*item, time.Duration) {
	var (
		batch   []*item
		blocked map[string]bool
		wait    = w.c.cfg.MaxRetryBackoff
	)
	for _, it := range w.pending {
		if len(batch) == w.c.cfg.BatchSize {
			break
		}
		if blocked[it.orderKey] {
			continue
		}
		if it.notBefore.After(now) {
			if blocked == nil {
				blocked = map[string]bool{}
			}
			blocked[it.orderKey] = true
			wait = min(wait, it.notBefore.Sub(now))
			continue
		}
		batch = append(batch, it)
	}
	return batch, wait
}

// abandon nacks what the worker holds when it stops.
func (w *worker) abandon() {
	for _, it := range w.pending {
		if !it.done {
			w.c.finish(it, false)
		}
	}
	w.pending = nil
	w.drainQueue()
}

// drainQueue nacks the items still queued for the worker.
func (w *worker) drainQueue() {
	for {
		select {
		case it := <-w.in:
			w.c.finish(it, false)
		default:
			return
		}
	}
}

// outcome is what became of an item in a batch.
type outcome int

const (
	outProcessed outcome = iota + 1
	outDuplicate
	outRetry    // failed, to be retried later
	outDeferred // not run: an earlier item of its key failed in the batch
	outParked
	outHeld
	outSkipped
)

func (w *worker) process(ctx context.Context, batch []*item) {
	c := w.c
	outs, errs, err := w.runBatch(ctx, batch)
	now := time.Now()
	if err != nil {
		w.failures++
		d := c.backoff(w.failures)
		for _, it := range batch {
			it.notBefore = now.Add(d)
		}
		lvl := slog.LevelWarn
		if w.failures > 1 {
			lvl = slog.LevelDebug
		}
		c.cfg.Logger.Log(ctx, lvl, "inbox: consumer batch failed; retrying it", "consumer", c.cfg.Name, "messages", len(batch), "retry_in", d, "error", err)
		return
	}
	if w.failures > 0 {
		c.cfg.Logger.Info("inbox: consumer batches commit again", "consumer", c.cfg.Name)
	}
	w.failures = 0
	c.progress()
	c.tel.batch(ctx, len(batch))
	for i, it := range batch {
		switch outs[i] {
		case outProcessed:
			c.processed.Add(1)
			c.tel.processed(ctx, it)
			c.finish(it, true)
		case outDuplicate:
			c.count(ctx, &c.duplicates, c.tel.duplicates, it.topic)
			c.finish(it, true)
		case outSkipped:
			c.count(ctx, &c.skipped, c.tel.skipped, it.topic)
			c.cfg.Logger.Debug("inbox: skipped a message with an unknown event", "consumer", c.cfg.Name, "message_uuid", it.msg.UUID, "error", errs[i])
			c.finish(it, true)
		case outParked:
			c.count(ctx, &c.failures, c.tel.failures, it.topic)
			c.count(ctx, &c.parked, c.tel.parked, it.topic)
			c.cfg.Logger.Warn("inbox: parked a message in the failed table", "consumer", c.cfg.Name, "message_uuid", it.msg.UUID,
				"topic", it.topic, "partition_key", it.key, "attempts", it.attempts+1, "error", errs[i])
			c.finish(it, true)
		case outHeld:
			c.count(ctx, &c.held, c.tel.held, it.topic)
			c.finish(it, true)
		case outRetry:
			c.count(ctx, &c.failures, c.tel.failures, it.topic)
			it.attempts++
			it.notBefore = now.Add(c.backoff(it.attempts))
			c.cfg.Logger.Debug("inbox: handler failed; retrying", "consumer", c.cfg.Name, "message_uuid", it.msg.UUID, "attempt", it.attempts, "error", errs[i])
		case outDeferred:
			if it.stored != nil {
				// Still in the failed table, behind the one that failed.
				c.finish(it, true)
			}
		}
	}
}

// count adds one to a Stats counter and its metric.
func (c *Consumer) count(ctx context.Context, n *atomic.Int64, m metric.Int64Counter, topic string) {
	n.Add(1)
	c.tel.count(ctx, m, topic)
}

// savepoint names the savepoint of each message's handler.
const savepoint = "txoutbox_inbox_message"

// errSavepoints rolls back a batch run without savepoints in which a
// handler failed: the batch runs again with them.
var errSavepoints = errors.New("inbox: a handler failed; run the batch again with savepoints")

// runBatch processes batch in one transaction. It returns each item's
// outcome and handler error, or the error that rolled the transaction back.
//
// It first runs every handler without a savepoint: two statements less
// per message. When a handler fails, that transaction is rolled back and
// the batch runs again with a savepoint per handler, so that the failure
// undoes only its own message's writes (the handlers before it run twice).
//
// After a batch that needed savepoints, the worker runs its next
// savepointBatches batches with them from the start: a stream of failing
// messages costs a savepoint each, not a second run of every batch.
func (w *worker) runBatch(ctx context.Context, batch []*item) ([]outcome, []error, error) {
	if w.savepoints > 0 {
		w.savepoints--
		return w.c.runBatchTx(ctx, batch, true)
	}
	outs, errs, err := w.c.runBatchTx(ctx, batch, false)
	if errors.Is(err, errSavepoints) {
		w.savepoints = savepointBatches
		return w.c.runBatchTx(ctx, batch, true)
	}
	return outs, errs, err
}

// savepointBatches is how many batches a worker runs with savepoints
// after one needed them.
const savepointBatches = 16

// runBatchTx is one run of runBatch, with or without savepoints.
func (c *Consumer) runBatchTx(ctx context.Context, batch []*item, savepoints bool) ([]outcome, []error, error) {
	outs := make([]outcome, len(batch))
	errs := make([]error, len(batch))
	in := c.in
	now := in.cfg.Now()
	err := in.db.WithContext(context.WithoutCancel(ctx)).Transaction(func(tx *gorm.DB) error {
		fresh, err := c.record(tx, batch, now)
		if err != nil {
			return err
		}
		seen := make(map[string]bool, len(batch))
		var keys []string
		for i, it := range batch {
			if it.stored != nil {
				if it.key != "" && c.cfg.AfterPark == KeyWait {
					keys = append(keys, it.key)
				}
				continue
			}
			if !fresh[it.msg.UUID] || seen[it.msg.UUID] {
				outs[i] = outDuplicate
				continue
			}
			seen[it.msg.UUID] = true
			if it.key != "" && c.cfg.AfterPark == KeyWait {
				keys = append(keys, it.key)
			}
		}
		held, err := c.heldKeys(tx, keys)
		if err != nil {
			return err
		}
		stopped := map[string]bool{}
		// advanced marks the keys whose first stored message went on in
		// this batch: their next stored messages may follow it.
		advanced := map[string]bool{}
		var unrecord []string
		for i, it := range batch {
			if outs[i] == outDuplicate {
				continue
			}
			if stopped[it.orderKey] {
				outs[i] = outDeferred
				if it.stored == nil {
					unrecord = append(unrecord, it.msg.UUID)
				}
				continue
			}
			if it.stored != nil && it.key != "" && c.cfg.AfterPark == KeyWait && !advanced[it.key] {
				// A stored message goes on only as its key's first in the
				// failed table: one handed over behind a message that has
				// failed again since stays where it is.
				if head, ok := held[it.key]; ok && head != it.msg.UUID {
					stopped[it.orderKey] = true
					outs[i] = outDeferred
					continue
				}
			}
			if it.stored == nil && it.key != "" {
				if behind, ok := held[it.key]; ok {
					if err := c.insertFailed(tx, it, StatusHeld, "held behind message "+behind+" of the same partition key", now); err != nil {
						return err
					}
					outs[i] = outHeld
					continue
				}
			}
			herr := it.parkErr
			if herr == nil {
				var txErr error
				if !savepoints {
					if herr = call(c.cfg.Handler, withTx(it.msg, tx)); herr != nil {
						return errSavepoints
					}
				} else if herr, txErr = c.handle(tx, it); txErr != nil {
					return txErr
				}
			}
			if herr == nil {
				if it.stored != nil {
					if err := tx.Exec(in.sql.deleteFailed, it.stored.ID).Error; err != nil {
						return fmt.Errorf("delete retried message from %s: %w", in.failed, err)
					}
					advanced[it.key] = true
				}
				outs[i] = outProcessed
				continue
			}
			errs[i] = herr
			switch c.classify(herr, it) {
			case outSkipped:
				outs[i] = outSkipped
				if it.stored != nil {
					if err := tx.Exec(in.sql.deleteFailed, it.stored.ID).Error; err != nil {
						return fmt.Errorf("delete skipped message from %s: %w", in.failed, err)
					}
					advanced[it.key] = true
				}
			case outParked:
				outs[i] = outParked
				if it.stored != nil {
					stopped[it.orderKey] = true
					err = tx.Exec(in.sql.failAgain, StatusFailed, herr.Error(), in.drv.timeArg(now), it.stored.ID).Error
				} else {
					err = c.insertFailed(tx, it, StatusFailed, herr.Error(), now)
				}
				if err != nil {
					return err
				}
				if it.key != "" && c.cfg.AfterPark == KeyWait {
					held[it.key] = it.msg.UUID
				}
			default:
				outs[i] = outRetry
				stopped[it.orderKey] = true
				unrecord = append(unrecord, it.msg.UUID)
			}
		}
		if len(unrecord) > 0 {
			if err := tx.Exec(in.sql.unrecord, c.cfg.Name, unrecord).Error; err != nil {
				return fmt.Errorf("inbox: unrecord failed messages in %s: %w", in.table, err)
			}
		}
		return nil
	})
	return outs, errs, err
}

// record inserts the inbox rows of the batch's live items in one statement
// and returns the UUIDs it inserted (the others are duplicates).
func (c *Consumer) record(tx *gorm.DB, batch []*item, now time.Time) (map[string]bool, error) {
	uuids := make([]string, 0, len(batch))
	for _, it := range batch {
		if it.stored == nil {
			uuids = append(uuids, it.msg.UUID)
		}
	}
	if len(uuids) == 0 {
		return nil, nil
	}
	// Sorted and unique: concurrent batches lock the rows in one order.
	slices.Sort(uuids)
	uuids = slices.Compact(uuids)
	inserted, err := c.in.drv.record(tx, &c.in.sql, c.cfg.Name, uuids, c.in.drv.timeArg(now))
	if err != nil {
		return nil, fmt.Errorf("inbox: record %d messages in %s: %w", len(uuids), c.in.table, err)
	}
	fresh := make(map[string]bool, len(inserted))
	for _, u := range inserted {
		fresh[u] = true
	}
	return fresh, nil
}

// heldKeys returns the keys among keys that have rows in the failed table,
// each with the UUID of its first row.
func (c *Consumer) heldKeys(tx *gorm.DB, keys []string) (map[string]string, error) {
	held := map[string]string{}
	if len(keys) == 0 {
		return held, nil
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	var rows []struct {
		PartitionKey string
		MessageUUID  string
	}
	err := tx.Raw(c.in.sql.heldKeys, c.cfg.Name, keys).Scan(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("inbox: read held keys from %s: %w", c.in.failed, err)
	}
	for _, r := range rows {
		held[r.PartitionKey] = r.MessageUUID
	}
	return held, nil
}

// insertFailed records a live item in the failed table.
func (c *Consumer) insertFailed(tx *gorm.DB, it *item, status Status, reason string, now time.Time) error {
	md, err := json.Marshal(it.msg.Metadata)
	if err != nil {
		return fmt.Errorf("inbox: encode metadata of message %s: %w", it.msg.UUID, err)
	}
	payload := []byte(it.msg.Payload)
	if payload == nil {
		payload = []byte{}
	}
	attempts := it.attempts
	if status == StatusFailed {
		attempts++
	}
	err = tx.Exec(c.in.sql.insertFailed,
		c.cfg.Name, it.msg.UUID, it.topic, it.key, payload, string(md), status, reason, attempts, c.in.drv.timeArg(now)).Error
	if err != nil {
		return fmt.Errorf("inbox: record message %s in %s: %w", it.msg.UUID, c.in.failed, err)
	}
	return nil
}

// handle runs the handler on it in a savepoint. herr is the handler's
// error; txErr an error that broke the transaction.
func (c *Consumer) handle(tx *gorm.DB, it *item) (herr, txErr error) {
	if err := tx.Exec("SAVEPOINT " + savepoint).Error; err != nil {
		return nil, fmt.Errorf("inbox: savepoint: %w", err)
	}
	herr = call(c.cfg.Handler, withTx(it.msg, tx))
	if herr != nil {
		if err := tx.Exec("ROLLBACK TO SAVEPOINT " + savepoint).Error; err != nil {
			return herr, fmt.Errorf("inbox: roll back to savepoint after %v: %w", herr, err)
		}
	}
	if err := tx.Exec("RELEASE SAVEPOINT " + savepoint).Error; err != nil {
		return herr, fmt.Errorf("inbox: release savepoint: %w", err)
	}
	return herr, nil
}

// txMessage is a message whose context carries the batch's transaction
// while its handler runs.
type txMessage struct {
	msg  *message.Message
	orig context.Context
}

// withTx puts tx into msg's context until call restores it.
func withTx(msg *message.Message, tx *gorm.DB) txMessage {
	orig := msg.Context()
	msg.SetContext(outbox.WithTx(orig, tx))
	return txMessage{msg: msg, orig: orig}
}

// call runs h on m, turning a panic into an error, and gives the message
// its own context back.
func call(h message.NoPublishHandlerFunc, m txMessage) (err error) {
	defer m.msg.SetContext(m.orig)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("inbox: handler panicked: %v", r)
		}
	}()
	return h(m.msg)
}

// classify says what a handler error makes of an item: outSkipped,
// outParked or outRetry.
func (c *Consumer) classify(err error, it *item) outcome {
	switch {
	case errors.Is(err, handlers.ErrUnknownEvent):
		if c.cfg.UnknownEvents == UnknownSkip {
			return outSkipped
		}
		return outParked
	case errors.Is(err, ErrPermanent), errors.Is(err, handlers.ErrDecode):
		return outParked
	case it.stored != nil, it.attempts+1 >= c.cfg.MaxAttempts:
		// A stored message is retried once per request.
		return outParked
	}
	return outRetry
}

// redrive feeds the failed table's messages that may go on to the
// workers, every RedrivePoll, and at once again after a round that found
// some.
func (c *Consumer) redrive(ctx context.Context) {
	ticker := time.NewTicker(c.cfg.RedrivePoll)
	defer ticker.Stop()
	for {
		n, err := c.redriveOnce(ctx)
		if err != nil && ctx.Err() == nil {
			c.cfg.Logger.Warn("inbox: read the failed table", "consumer", c.cfg.Name, "error", err)
		}
		if n > 0 && err == nil {
			continue
		}
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return
		}
	}
}

// redriveOnce hands the messages that may go on to the workers and waits
// until they are done. It returns how many it handed over.
func (c *Consumer) redriveOnce(ctx context.Context) (int, error) {
	rows, err := c.redrivable(ctx)
	if err != nil || len(rows) == 0 {
		return 0, err
	}
	var finished sync.WaitGroup
	n := 0
	for _, f := range rows {
		it := newStoredItem(f, &finished)
		finished.Add(1)
		c.inFlight.Add(1)
		select {
		case c.workerFor(it.orderKey).in <- it:
			n++
		case <-ctx.Done():
			finished.Done()
			c.inFlight.Add(-1)
			return n, nil
		}
	}
	// The workers finish every item, also when they stop: then Run nacks
	// what is still queued, after this returns.
	done := make(chan struct{})
	go func() {
		finished.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return n, nil
}

// redrivable reads the failed table's rows that may be processed now, in
// ID order: those marked retry and, under KeyWait, a key's rows from its
// first one while they are retry or held.
func (c *Consumer) redrivable(ctx context.Context) ([]FailedMessage, error) {
	in := c.in
	db := in.db.WithContext(ctx)
	limit := c.cfg.BatchSize * len(c.workers)
	if c.cfg.AfterPark == KeyContinue {
		return in.scanFailed(db, in.sql.redrive, c.cfg.Name, []Status{StatusRetry, StatusHeld}, limit)
	}
	rows, err := in.scanFailed(db, in.sql.redriveUnkeyed, c.cfg.Name, StatusRetry, limit)
	if err != nil {
		return nil, err
	}
	var keys []string
	err = db.Raw(in.sql.redriveKeyHeads, c.cfg.Name, StatusFailed, limit).Scan(&keys).Error
	if err != nil || len(keys) == 0 {
		return rows, err
	}
	keyed, err := in.scanFailed(db, in.sql.redriveKeyed, c.cfg.Name, keys)
	if err != nil {
		return nil, err
	}
	stopped := map[string]bool{}
	for _, f := range keyed {
		if stopped[f.PartitionKey] || f.Status == StatusFailed {
			stopped[f.PartitionKey] = true
			continue
		}
		rows = append(rows, f)
	}
	slices.SortFunc(rows, func(a, b FailedMessage) int { return cmp.Compare(a.ID, b.ID) })
	return rows, nil
}
