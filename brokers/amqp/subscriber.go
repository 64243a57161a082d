package amqp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Acknowledgement coalescing of a subscription; see Subscriber.
const (
	// MaxPendingAcks caps the handled messages whose acknowledgement a
	// subscription holds back to send as one: it holds at most
	// min(Config.Prefetch/2, MaxPendingAcks), and at least 1 (with
	// Prefetch 1 every message is acknowledged on its own).
	MaxPendingAcks = 256
	// MaxAckDelay bounds how long a subscription holds back the
	// acknowledgement of a handled message.
	MaxAckDelay = 100 * time.Millisecond
	// AckLinger is how long a subscription that holds back acks waits
	// for a further delivery before it sends them.
	AckLinger = time.Millisecond
)

// Backoff of a subscription that lost its channel: the first attempt to
// consume again is made after minResubscribeWait, the wait doubles after
// each failed attempt, up to maxResubscribeWait.
const (
	minResubscribeWait = 100 * time.Millisecond
	maxResubscribeWait = 5 * time.Second
)

// Subscriber consumes topics' queues, the ones the Publisher sends to. It
// is safe for concurrent use; its subscriptions share one connection, with
// an AMQP channel each. Create it with NewSubscriber.
//
// # Delivery
//
// Each Subscribe declares the topic's durable queue (with
// Config.QueueArguments, like the Publisher), sets the channel's prefetch
// to Config.Prefetch and consumes with manual acknowledgements. The
// returned channel hands the queue's messages over one at a time, in queue
// order: the next message only after the previous one was acked or
// nacked (with Config.Concurrent, up to Prefetch at once: see Concurrent
// delivery). A message's context is a child of Subscribe's context,
// cancelled once the message is acked or nacked, or when the subscription
// ends.
//
// A nacked message is requeued (basic.nack with requeue) and delivered
// again: with Prefetch 1 before the messages behind it, with a larger
// prefetch after the ones already prefetched.
//
// Decoding never drops a message: metadata are the AMQP headers
// (watermill-amqp's DefaultMarshaler format, which the Publisher writes),
// a header value that is not a string is converted to one (a byte array as
// its bytes, any other value as fmt.Sprint formats it). The UUID is the
// header _watermill_message_uuid; without it, the AMQP message-id; without
// either, a new random UUID, so that a handler deduplicating on the UUID
// does not take two different messages for one (each redelivery of such a
// message then gets a UUID of its own).
//
// # Coalesced acknowledgements
//
// An ack is not sent to RabbitMQ at once while more of the queue's
// messages follow: the subscription keeps the highest handled delivery
// tag and acknowledges all the held-back messages with one basic.ack
// (multiple) when
//   - no further delivery arrives within AckLinger (1ms) of the previous
//     one's ack: the subscription idles;
//   - min(Prefetch/2, MaxPendingAcks) acks are held back;
//   - the oldest of them is MaxAckDelay (100ms) old, as while a slow
//     handler works on the next message;
//   - a message is nacked (before the nack);
//   - the subscription ends: its context, Close (best effort), or a lost
//     channel (then it cannot be sent).
//
// Without Config.Concurrent messages are handled strictly in order, so
// the tags a multiple ack covers are exactly the handled ones. With Prefetch 1 every message is
// acked on its own, at once. RabbitMQ does one unit of work per ack frame
// instead of one per message: draining 5,000 messages with Prefetch 500
// takes about 30 ack frames (TestCoalescedAcks). AckLinger is there
// because a subscription that keeps up with RabbitMQ finds no delivery
// waiting every few messages; acking whenever none waited sent one ack
// frame per 3 to 10 messages.
//
// The price is a larger window for duplicates: a crash, or a lost
// connection, redelivers the messages whose acks were held back (at most
// min(Prefetch/2, MaxPendingAcks), handled within the last MaxAckDelay)
// besides the ones not handled yet; in all at most Prefetch messages, as
// without coalescing. Consumers deduplicate on the UUID anyway.
//
// # Concurrent delivery
//
// With Config.Concurrent a subscription hands over each delivery as soon
// as it arrives, in queue order, without waiting for the acks of the ones
// before it: up to Prefetch unacknowledged messages at once (RabbitMQ's
// QoS holds back the next one). Their acks and nacks come in any order.
// Acks are still coalesced, tracked per channel by delivery tag: the
// floor is the highest tag up to which every delivery is acked or nacked,
// and one basic.ack (multiple) up to the highest acked tag at or below
// the floor covers exactly the acks held there. It is sent on the same
// occasions as above: min(Prefetch/2, MaxPendingAcks) acks held up to the
// floor; nothing to hand over and no delivery or ack within AckLinger;
// before a nack; the oldest held ack MaxAckDelay old; the end of the
// subscription. An ack above a message not handled yet cannot be covered
// by a multiple ack: it is held, and sent on its own (basic.ack without
// multiple) once the oldest held ack is MaxAckDelay old or the
// subscription ends, so a slow message does not hold the prefetch window.
// No tag is acknowledged that the handler did not ack, and none twice
// (RabbitMQ closes the channel for an unknown tag). A nack is sent at
// once, on its own, after the acks held up to the floor. Draining 1,000
// messages with Prefetch 50, acked in a random order in runs of 20, takes
// about 35 ack frames (TestConcurrentOutOfOrderAcks).
//
// A Watermill Router handles each message in a goroutine of its own, so
// with Concurrent it loses the queue's order; Concurrent is for consumers
// that keep an order themselves, such as inbox.Consumer (per partition
// key).
//
// # Outages
//
// When a subscription's channel or connection closes (a broker restart, a
// network failure, its queue deleted: it is declared again), the
// subscription logs it once at error level and consumes again by itself:
// it reconnects after 100ms, doubling the wait after each failed attempt
// up to 5s, logging the failed attempts at debug level and the recovery
// at info level. The
// channel Subscribe returned stays open meanwhile. A message handed over
// before the loss is redelivered by RabbitMQ; its ack or nack goes
// nowhere (delivery tags belong to the lost channel), and the next
// message is handed over only after it. With Config.Concurrent the
// subscription does not wait: the contexts of the messages it handed over
// end with the lost channel, the new channel's deliveries (tags from 1
// again) are handed over as they arrive, and a redelivered message can
// arrive while its first copy is still being handled.
//
// The returned channel is closed when Subscribe's context ends or the
// Subscriber is closed.
type Subscriber struct {
	cfg        Config
	maxPending int
	// ctx ends on Close; the context of every subscription derives from
	// it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // one per subscription

	mu      sync.Mutex
	conn    *amqp091.Connection
	dialing chan struct{} // closed when the dial under way is done
	closed  bool
}

var (
	_ message.Subscriber           = (*Subscriber)(nil)
	_ message.SubscribeInitializer = (*Subscriber)(nil)
)

// NewSubscriber connects to RabbitMQ. It fails when the config is invalid
// or the broker does not answer within Config.ConnectTimeout (or before
// ctx ends). Later connection losses are repaired by the subscriptions.
func NewSubscriber(ctx context.Context, cfg Config) (*Subscriber, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	conn, err := dial(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("amqp: subscriber: %w", err)
	}
	s := &Subscriber{
		cfg:        cfg,
		maxPending: max(1, min(cfg.Prefetch/2, MaxPendingAcks)),
		conn:       conn,
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Subscribe starts consuming topic's queue (see Subscriber). It fails when
// it cannot do so now, for example when the queue exists with other
// arguments than Config.QueueArguments; after it returned, the
// subscription recovers from outages by itself. After Close it returns
// ErrClosed.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	queue := s.cfg.Queue(topic)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	s.wg.Add(1)
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	end := func() {
		stop()
		cancel()
		s.wg.Done()
	}
	c, err := s.open(ctx, queue)
	if err != nil {
		end()
		if errors.Is(err, ErrClosed) || s.ctx.Err() != nil {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("amqp: subscribe to %s: %w", queue, err)
	}
	out := make(chan *message.Message)
	go func() {
		defer end()
		s.run(ctx, topic, queue, c, out)
	}()
	return out, nil
}

// SubscribeInitialize declares topic's queue, as Subscribe does.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	queue := s.cfg.Queue(topic)
	conn, err := s.connection(s.ctx)
	if err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("amqp: declare queue %s: open channel: %w", queue, err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(queue, true, false, false, false, s.cfg.QueueArguments); err != nil {
		return fmt.Errorf("amqp: declare queue %s: %w", queue, err)
	}
	return nil
}

// Close ends every subscription, sending the acks they hold back (best
// effort), closes their channels and waits for them, then closes the
// connection. Messages handed over and not acked yet are redelivered by
// RabbitMQ. Close is safe to call more than once.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	timer := time.NewTimer(s.cfg.ConnectTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		// A subscription waits for a broker that does not answer (a
		// channel close, say): closing the connection ends the wait.
		_ = s.closeConn()
	}
	<-done
	return s.closeConn()
}

func (s *Subscriber) closeConn() error {
	s.mu.Lock()
	conn := s.conn
	s.conn = nil
	s.mu.Unlock()
	if conn == nil {
		return nil
	}
	err := conn.CloseDeadline(time.Now().Add(s.cfg.ConnectTimeout))
	if errors.Is(err, amqp091.ErrClosed) {
		err = nil
	}
	return err
}

// connection returns the live connection, dialing when there is none. One
// caller dials at a time; the others wait for its result.
func (s *Subscriber) connection(ctx context.Context) (*amqp091.Connection, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, ErrClosed
		}
		if s.conn != nil && !s.conn.IsClosed() {
			conn := s.conn
			s.mu.Unlock()
			return conn, nil
		}
		if d := s.dialing; d != nil {
			s.mu.Unlock()
			select {
			case <-d:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		d := make(chan struct{})
		s.dialing = d
		s.mu.Unlock()

		conn, err := dial(ctx, s.cfg)
		s.mu.Lock()
		s.dialing = nil
		close(d)
		if err == nil && s.closed {
			_ = conn.Close()
			conn, err = nil, ErrClosed
		}
		if err == nil {
			s.conn = conn
		}
		s.mu.Unlock()
		return conn, err
	}
}

// consumer is a subscription's channel and its deliveries.
type consumer struct {
	ch         *amqp091.Channel
	deliveries <-chan amqp091.Delivery
	closes     chan *amqp091.Error
}

// open declares queue and consumes it on a new channel.
func (s *Subscriber) open(ctx context.Context, queue string) (*consumer, error) {
	conn, err := s.connection(ctx)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	closes := ch.NotifyClose(make(chan *amqp091.Error, 1))
	fail := func(what string, err error) (*consumer, error) {
		_ = ch.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, s.cfg.QueueArguments); err != nil {
		return fail("declare queue", err)
	}
	if err := ch.Qos(s.cfg.Prefetch, 0, false); err != nil {
		return fail("set prefetch", err)
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		return fail("consume", err)
	}
	return &consumer{ch: ch, deliveries: deliveries, closes: closes}, nil
}

// lost says why c's deliveries ended.
func (c *consumer) lost() error {
	select {
	case e, ok := <-c.closes:
		if ok && e != nil {
			return e
		}
	default:
	}
	if c.ch.IsClosed() {
		return errors.New("amqp: channel closed")
	}
	return errors.New("amqp: RabbitMQ cancelled the consumer (was the queue deleted?)")
}

// run feeds out from c, and from new channels after c is lost, until ctx
// ends.
func (s *Subscriber) run(ctx context.Context, topic, queue string, c *consumer, out chan<- *message.Message) {
	defer close(out)
	log := s.cfg.Logger.With(watermill.LogFields{"topic": topic, "amqp_queue": queue})
	for {
		reason := s.consume(ctx, c, out, log)
		// Unacknowledged messages go back to the queue. The consumer can
		// also have been cancelled on a live channel.
		_ = c.ch.Close()
		if ctx.Err() != nil {
			return
		}
		if c = s.reopen(ctx, queue, reason, log); c == nil {
			return
		}
	}
}

// reopen consumes queue again after the subscription lost its channel,
// with backoff. It returns nil when ctx ends first.
func (s *Subscriber) reopen(ctx context.Context, queue string, reason error, log watermill.LoggerAdapter) *consumer {
	wait := minResubscribeWait
	lost := time.Now()
	log.Error("AMQP subscription lost; consuming again in the background", reason, watermill.LogFields{"retry_in": wait.String()})
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for attempt := 1; ; attempt++ {
		select {
		case <-timer.C:
		case <-ctx.Done():
			return nil
		}
		c, err := s.open(ctx, queue)
		if err == nil {
			log.Info("AMQP subscription resumed", watermill.LogFields{
				"attempts": attempt, "down_for": time.Since(lost).Round(time.Millisecond).String(),
			})
			return c
		}
		if ctx.Err() != nil {
			return nil
		}
		wait = min(2*wait, maxResubscribeWait)
		// The loss was logged as an error; every attempt would flood.
		log.Debug("AMQP subscription: cannot consume yet", watermill.LogFields{
			"attempt": attempt, "error": err.Error(), "retry_in": wait.String(),
		})
		timer.Reset(wait)
	}
}

// consume hands c's deliveries to out one at a time until ctx ends or the
// deliveries end; it returns why they ended.
func (s *Subscriber) consume(ctx context.Context, c *consumer, out chan<- *message.Message, log watermill.LoggerAdapter) error {
	if s.cfg.Concurrent {
		return s.consumeConcurrent(ctx, c, out, log)
	}
	acks := newAcker(c.ch, s.maxPending, log)
	defer acks.flush()
	for {
		d, ok, err := c.next(ctx, acks)
		if err != nil {
			return err
		}
		if !ok {
			return c.lost()
		}
		if !deliver(ctx, c.ch, &d, out, acks, log) {
			return ctx.Err()
		}
	}
}

// next returns the next delivery (ok false when they ended), or ctx's
// error. Held-back acks are sent when no delivery comes within AckLinger.
func (c *consumer) next(ctx context.Context, acks *acker) (d amqp091.Delivery, ok bool, err error) {
	select {
	case d, ok = <-c.deliveries:
		return d, ok, nil
	default:
	}
	if acks.n > 0 {
		// While a stream lasts, RabbitMQ sends the next deliveries
		// soon: a subscription as fast as the stream would otherwise
		// find none waiting every few messages and ack in small batches.
		acks.idle.Reset(AckLinger)
		select {
		case d, ok = <-c.deliveries:
			acks.idle.Stop()
			return d, ok, nil
		case <-acks.idle.C:
		case <-acks.due():
			acks.idle.Stop()
		case <-ctx.Done():
			acks.idle.Stop()
			return d, false, ctx.Err()
		}
		acks.flush()
	}
	select {
	case d, ok = <-c.deliveries:
		return d, ok, nil
	case <-ctx.Done():
		return d, false, ctx.Err()
	}
}

// deliver hands d over and waits for its ack or nack. It returns false
// when ctx ends first.
func deliver(ctx context.Context, ch *amqp091.Channel, d *amqp091.Delivery, out chan<- *message.Message, acks *acker, log watermill.LoggerAdapter) bool {
	msg := decode(d)
	msgCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	msg.SetContext(msgCtx)
	for sent := false; !sent; {
		select {
		case out <- msg:
			sent = true
		case <-acks.due():
			acks.flush()
		case <-ctx.Done():
			return false
		}
	}
	for {
		select {
		case <-msg.Acked():
			acks.add(d.DeliveryTag)
			return true
		case <-msg.Nacked():
			acks.flush()
			if err := ch.Nack(d.DeliveryTag, false, true); err != nil {
				log.Debug("AMQP nack not sent; RabbitMQ redelivers the message", watermill.LogFields{
					"message_uuid": msg.UUID, "error": err.Error(),
				})
			}
			return true
		case <-acks.due():
			acks.flush()
		case <-ctx.Done():
			// An ack that came with the end still counts.
			select {
			case <-msg.Acked():
				acks.add(d.DeliveryTag)
			default:
			}
			return false
		}
	}
}

// acker holds back the acks of a channel's handled messages and sends
// them as one.
type acker struct {
	ch    *amqp091.Channel
	max   int
	log   watermill.LoggerAdapter
	tag   uint64      // the highest handled delivery tag not acknowledged yet
	n     int         // handled messages not acknowledged yet
	timer *time.Timer // MaxAckDelay after the oldest of them was handled
	armed bool        // timer runs: n > 0
	idle  *time.Timer // AckLinger, while next waits for a delivery
}

func newAcker(ch *amqp091.Channel, maxPending int, log watermill.LoggerAdapter) *acker {
	stopped := func() *time.Timer {
		t := time.NewTimer(time.Hour)
		t.Stop()
		return t
	}
	return &acker{ch: ch, max: maxPending, log: log, timer: stopped(), idle: stopped()}
}

// add records a handled message; messages are handled in delivery order.
func (a *acker) add(tag uint64) {
	a.tag = tag
	a.n++
	if a.n >= a.max {
		a.flush()
		return
	}
	if !a.armed {
		a.timer.Reset(MaxAckDelay)
		a.armed = true
	}
}

// due fires when the oldest held-back ack is MaxAckDelay old; it is nil
// (blocks) when none is held back.
func (a *acker) due() <-chan time.Time {
	if !a.armed {
		return nil
	}
	return a.timer.C
}

// flush acknowledges every handled message not acknowledged yet.
func (a *acker) flush() {
	if a.n == 0 {
		return
	}
	if a.armed {
		a.timer.Stop()
		a.armed = false
	}
	if err := a.ch.Ack(a.tag, a.n > 1); err != nil {
		a.log.Debug("AMQP ack not sent; RabbitMQ redelivers the messages", watermill.LogFields{
			"messages": a.n, "delivery_tag": a.tag, "error": err.Error(),
		})
	}
	a.n = 0
}

// decode turns a delivery into a message; see Subscriber.
func decode(d *amqp091.Delivery) *message.Message {
	var uuid string
	md := make(message.Metadata, len(d.Headers))
	for k, v := range d.Headers {
		if k == wamqp.DefaultMessageUUIDHeaderKey {
			uuid = headerString(v)
			continue
		}
		md[k] = headerString(v)
	}
	uuid = cmp.Or(uuid, d.MessageId)
	if uuid == "" {
		uuid = watermill.NewUUID()
	}
	msg := message.NewMessage(uuid, d.Body)
	msg.Metadata = md
	return msg
}

func headerString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

// dial connects within cfg.ConnectTimeout, the TCP connect and the AMQP
// handshake together, or until ctx ends: an abandoned attempt closes its
// socket and leaves nothing running.
func dial(ctx context.Context, cfg Config) (*amqp091.Connection, error) {
	dctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	dc := cfg.dialConfig()
	var stop func() bool
	dc.Dial = func(network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(dctx, network, addr)
		if err != nil {
			return nil, err
		}
		// The handshake runs on this goroutine until DialConfig returns.
		stop = context.AfterFunc(dctx, func() { _ = c.Close() })
		return c, nil
	}
	conn, err := amqp091.DialConfig(cfg.URL, dc)
	if stop != nil && !stop() {
		// dctx ended during the handshake and closed the socket.
		if conn != nil {
			_ = conn.Close()
		}
		conn, err = nil, dctx.Err()
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to %s: %w", redact(cfg.URL), ctx.Err())
		}
		if dctx.Err() != nil {
			return nil, fmt.Errorf("connect to %s: no answer within %v", redact(cfg.URL), cfg.ConnectTimeout)
		}
		return nil, fmt.Errorf("connect to %s: %w", redact(cfg.URL), err)
	}
	return conn, nil
}
