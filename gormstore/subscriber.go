package gormstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/internal/ctxtime"
	"github.com/txoutbox/txoutbox/outbox"
)

// Defaults of SubscriberConfig.
const (
	// DefaultSubscriberBatchSize is the default SubscriberConfig.BatchSize.
	DefaultSubscriberBatchSize = 10
	// DefaultSubscriberPollInterval is the default
	// SubscriberConfig.PollInterval.
	DefaultSubscriberPollInterval = time.Second
	// DefaultSubscriberRetryInterval is the default
	// SubscriberConfig.RetryInterval.
	DefaultSubscriberRetryInterval = time.Second
	// finishTimeout bounds the Finish or Release of a batch, which runs
	// also after the subscription's context has ended.
	finishTimeout = 10 * time.Second
)

// ErrSubscriberClosed is returned by Subscriber.Subscribe after Close.
var ErrSubscriberClosed = errors.New("gormstore: subscriber closed")

// SubscriberConfig configures a [Subscriber]. The zero value is valid.
type SubscriberConfig struct {
	// BatchSize is the most rows a subscription claims at once. The rows
	// are delivered one at a time; on PostgreSQL the claim keeps a
	// transaction and a pooled connection open until every message of the
	// batch is acked, or one is nacked. Lower it for slow handlers.
	// Optional; default DefaultSubscriberBatchSize (10).
	BatchSize int
	// PollInterval is how long an idle subscription waits for a
	// notification before it looks for rows anyway. Optional; default
	// DefaultSubscriberPollInterval (1s).
	PollInterval time.Duration
	// NoListen stops the subscriber from holding a PostgreSQL LISTEN
	// connection that wakes its subscriptions as soon as rows are
	// committed (see Config.NoNotify); subscriptions then find rows by
	// polling only. SQLite never notifies. Optional; default false.
	NoListen bool
	// NackDelay is how long a subscription waits after a Nack before it
	// claims again. The nacked message itself is due again at once.
	// Optional; default 0: redelivered at once, like Watermill's GoChannel
	// and an AMQP requeue. Put retry backoff in the Router (middleware.Retry).
	NackDelay time.Duration
	// RetryInterval is how long a subscription waits after a database
	// error before it claims again. Optional; default
	// DefaultSubscriberRetryInterval (1s).
	RetryInterval time.Duration
	// Logger receives the subscriber's logs. Optional; default
	// slog.Default().
	Logger *slog.Logger
}

// Validate reports every problem with the config.
func (c SubscriberConfig) Validate() error {
	var errs []error
	neg := func(name string, v int64) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%w: %s is negative (use 0 for the default)", ErrInvalidConfig, name))
		}
	}
	neg("BatchSize", int64(c.BatchSize))
	neg("PollInterval", int64(c.PollInterval))
	neg("NackDelay", int64(c.NackDelay))
	neg("RetryInterval", int64(c.RetryInterval))
	return errors.Join(errs...)
}

func (c *SubscriberConfig) setDefaults() {
	if c.BatchSize == 0 {
		c.BatchSize = DefaultSubscriberBatchSize
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultSubscriberPollInterval
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = DefaultSubscriberRetryInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Subscriber is a Watermill message.Subscriber over the native outbox
// table: with [Publisher] it makes the table a Watermill Pub/Sub, so a
// Router, its middlewares or the stock components/forwarder can consume
// it. Subscribe(ctx, topic) claims the topic's committed rows (the same
// claims the outbox.Forwarder makes) and delivers them one at a time,
// waiting for each Ack or Nack:
//
//   - Ack marks the row delivered (deleted, or kept with
//     Config.KeepDelivered). Acks are written when the batch ends.
//   - Nack charges the row a failed attempt (attempts, last_error) and
//     makes it due again at once; the rest of the batch is given back
//     untouched, so the nacked message comes again before the messages
//     after it.
//
// It is a competing-consumers queue: every subscription of a topic, in
// this process or another, takes messages from the same rows, and each
// message is acked once, then gone. There are no consumer groups, and a
// new subscriber does not receive messages already acked.
//
// Order: the messages of a topic with one partition key
// (outbox.MetadataPartitionKey) are delivered in publish order, one at a
// time, also with many subscribers (PostgreSQL advisory locks, as for the
// forwarder). The lock and the parking of a failed row are per key and
// table, not per topic: while a batch holds a key, or a row of the key is
// parked, the key's messages on the table's other topics wait too.
// Messages without a key are delivered in publish order to a single
// subscriber of the topic; several subscribers share them out of order.
//
// Delivery is at least once: a crash, a Close or a failed write between
// Ack and the end of the batch delivers the message again.
//
// Connections (PostgreSQL): each subscription holds one pooled connection
// while it has messages in flight, and the subscriber one more for LISTEN
// (see SubscriberConfig.NoListen). Size the pool for them plus what the
// handlers need, or give the subscriber a Store on a pool of its own.
//
// SQLite: a Store lets one claim exist at a time, so the subscriptions of
// one Store take turns, and a subscription waiting for an Ack holds the
// turn; there is no LISTEN, subscriptions poll.
type Subscriber struct {
	store   *Store
	cfg     SubscriberConfig
	logger  *slog.Logger
	closing chan struct{}

	mu        sync.Mutex
	closed    bool
	subs      map[*subscription]struct{}
	listening bool
	wg        sync.WaitGroup
}

var _ message.Subscriber = (*Subscriber)(nil)

// NewSubscriber returns a subscriber reading the store's table.
func NewSubscriber(store *Store, cfg SubscriberConfig) (*Subscriber, error) {
	if store == nil {
		return nil, fmt.Errorf("%w: nil store (create one with gormstore.New)", ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	return &Subscriber{
		store:   store,
		cfg:     cfg,
		logger:  cfg.Logger.With("component", "txoutbox.subscriber", "table", store.Table()),
		closing: make(chan struct{}),
		subs:    make(map[*subscription]struct{}),
	}, nil
}

// subscription is one Subscribe call.
type subscription struct {
	topic  string
	out    chan *message.Message
	wake   chan struct{}
	logger *slog.Logger
}

// Subscribe returns a channel of the topic's messages. The channel is
// closed when ctx ends or the subscriber is closed; a message in flight
// is then given back for redelivery. Each message's context ends when it
// is acked or nacked, or when the subscription ends.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if topic == "" {
		return nil, fmt.Errorf("gormstore: subscribe: %w", outbox.ErrEmptyTopic)
	}
	sub := &subscription{
		topic:  topic,
		out:    make(chan *message.Message),
		wake:   make(chan struct{}, 1),
		logger: s.logger.With("topic", topic),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrSubscriberClosed
	}
	s.subs[sub] = struct{}{}
	s.wg.Add(1)
	if !s.listening && !s.cfg.NoListen {
		s.listening = true
		s.wg.Add(1)
		go s.listen()
	}
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	go func() {
		defer s.wg.Done()
		defer cancel()
		defer close(sub.out)
		defer func() {
			s.mu.Lock()
			delete(s.subs, sub)
			s.mu.Unlock()
		}()
		s.run(ctx, sub)
	}()
	return sub.out, nil
}

// Close ends every subscription, gives back the messages in flight for
// redelivery, and waits until the subscriptions' channels are closed. It
// does not close the database. Later calls do nothing.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closing)
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// wakeAll makes every waiting subscription look for rows at once.
func (s *Subscriber) wakeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range s.subs {
		select {
		case sub.wake <- struct{}{}:
		default:
		}
	}
}

// listen wakes the subscriptions on PostgreSQL notifications until Close.
func (s *Subscriber) listen() {
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-s.closing
		cancel()
	}()
	for attempt := 1; ; attempt++ {
		err := s.store.Listen(ctx, s.wakeAll)
		if ctx.Err() != nil || errors.Is(err, outbox.ErrListenUnsupported) {
			return
		}
		if attempt == 1 || attempt%10 == 0 {
			s.logger.Warn("outbox subscriber: notification listener stopped; polling until it reconnects", "error", err, "attempt", attempt)
		}
		if !ctxtime.Sleep(ctx, s.cfg.RetryInterval) {
			return
		}
		s.wakeAll() // catch up on what was committed while not listening
	}
}

// run delivers the topic's rows until ctx ends.
func (s *Subscriber) run(ctx context.Context, sub *subscription) {
	failures := 0
	for ctx.Err() == nil {
		res := s.batch(ctx, sub)
		var wait time.Duration
		switch {
		case res.err != nil:
			failures++
			if failures == 1 || failures%10 == 0 {
				sub.logger.Warn("outbox subscriber: batch failed; retrying", "error", res.err, "consecutive", failures)
			}
			wait = s.cfg.RetryInterval
		case res.nacked:
			failures = 0
			if s.cfg.NackDelay > 0 && !ctxtime.Sleep(ctx, s.cfg.NackDelay) {
				return
			}
			continue
		case res.claimed > 0:
			failures = 0
			continue // more may be waiting
		default:
			failures = 0
			wait = s.cfg.PollInterval
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-sub.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

type batchResult struct {
	claimed int
	nacked  bool
	err     error
}

// batch claims rows of the topic, delivers them one at a time and
// finishes the claim with the acks and nacks it got.
func (s *Subscriber) batch(ctx context.Context, sub *subscription) batchResult {
	claim, err := s.store.Claim(ctx, outbox.ClaimParams{Limit: s.cfg.BatchSize, Topics: []string{sub.topic}})
	if err != nil {
		if ctx.Err() != nil {
			return batchResult{}
		}
		return batchResult{err: err}
	}
	rows := claim.Rows()
	res := batchResult{claimed: len(rows)}
	// Undecodable rows are parked; their keys' later rows wait behind them.
	msgs, parked := outbox.DecodeRows(rows)
	var (
		delivered []int64
		failures  []outbox.Failure
		stop      = int64(math.MaxInt64) // the ID of the row delivery stopped at
	)
deliver:
	for _, d := range msgs {
		msg := d.Message
		msgCtx, cancelMsg := context.WithCancel(ctx)
		msg.SetContext(msgCtx)
		select {
		case sub.out <- msg:
		case <-ctx.Done():
			cancelMsg()
			stop = d.Row.ID
			break deliver
		}
		select {
		case <-msg.Acked():
			delivered = append(delivered, d.Row.ID)
			cancelMsg()
		case <-msg.Nacked():
			cancelMsg()
			failures = append(failures, outbox.Failure{ID: d.Row.ID, Error: "nacked by subscriber"})
			res.nacked = true
			stop = d.Row.ID
			break deliver
		case <-ctx.Done():
			cancelMsg()
			select {
			case <-msg.Acked(): // acked as the subscription ended: no redelivery
				delivered = append(delivered, d.Row.ID)
			default:
			}
			stop = d.Row.ID
			break deliver
		}
	}
	// The undecodable rows before the one delivery stopped at are parked;
	// the later ones are given back with the rest of the batch.
	for _, fl := range parked {
		if fl.ID > stop {
			break
		}
		r := rows[slices.IndexFunc(rows, func(r outbox.Row) bool { return r.ID == fl.ID })]
		sub.logger.Error("outbox subscriber: undecodable row parked", "error", fl.Error, "id", r.ID, "message_uuid", r.UUID)
		failures = append(failures, fl)
	}

	finishCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	if len(delivered) == 0 && len(failures) == 0 {
		err = claim.Release(finishCtx)
	} else {
		err = claim.Finish(finishCtx, delivered, failures)
	}
	if err != nil {
		res.err = fmt.Errorf("finish batch (%d acked messages will be redelivered): %w", len(delivered), err)
	}
	return res
}
