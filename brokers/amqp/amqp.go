package amqp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/txoutbox/txoutbox/brokers/internal/unavail"
)

// Defaults of Config.
const (
	DefaultConnectTimeout = 5 * time.Second
	DefaultConfirmTimeout = 30 * time.Second
	DefaultPrefetch       = 1
	DefaultHeartbeat      = 10 * time.Second
)

var (
	// ErrInvalidConfig wraps every problem Config.Validate reports.
	ErrInvalidConfig = errors.New("amqp: invalid config")
	// ErrUnroutable is returned by Publish when RabbitMQ returned a message
	// because no queue was bound to receive it.
	ErrUnroutable = errors.New("amqp: message unroutable")
	// ErrNacked is returned by Publish when RabbitMQ refused a message
	// (a negative publisher confirm), or when the channel closed before
	// it confirmed.
	ErrNacked = errors.New("amqp: message not confirmed")
	// ErrClosed is returned by a Publisher's and a Subscriber's methods
	// after Close.
	ErrClosed = errors.New("amqp: closed")
)

// Config configures a Publisher and a Subscriber.
type Config struct {
	// URL is the broker, amqp://user:pass@host:5672/vhost or amqps://...
	// Required.
	URL string
	// ConsumerGroup is accepted for symmetry with the other brokers and
	// not used: the consumers of a topic compete on the topic's queue.
	// Optional.
	ConsumerGroup string
	// ConnectTimeout bounds dialing the broker. Optional; default
	// DefaultConnectTimeout (5s).
	ConnectTimeout time.Duration
	// Logger receives the clients' logs. Optional; default
	// watermill.NopLogger.
	Logger watermill.LoggerAdapter
	// Queue names the queue of a topic. Optional; default the topic
	// itself.
	Queue func(topic string) string
	// QueueArguments are the arguments the queues are declared with, for
	// example {"x-queue-type": "quorum"}. Publisher and subscribers must
	// agree on them: RabbitMQ refuses to redeclare a queue with other
	// arguments. Optional; default none (a classic durable queue).
	QueueArguments amqp091.Table
	// ConfirmTimeout bounds how long Publish waits for RabbitMQ to
	// confirm a call's messages; past it Publish fails and the channel is
	// discarded. Optional; default DefaultConfirmTimeout (30s).
	ConfirmTimeout time.Duration
	// Prefetch is the number of unacknowledged messages a Subscriber's
	// subscription holds (the channel's QoS prefetch count). 1 keeps a
	// key's order through redeliveries and acknowledges every message on
	// its own; more is faster and lets the subscription acknowledge up to
	// min(Prefetch/2, MaxPendingAcks) messages at once (see Subscriber).
	// Optional; default DefaultPrefetch (1).
	Prefetch int
	// Concurrent makes a subscription hand over up to Prefetch
	// unacknowledged messages at once, in queue order, and accept their
	// acks and nacks in any order (see Subscriber). It is for consumers
	// that keep order themselves, such as inbox.Consumer, which orders by
	// partition key over its workers; give them a Prefetch of at least
	// their workers times their batch size. A Watermill Router handles
	// each message in a goroutine of its own, so with Concurrent it loses
	// the queue's order: leave it off for routers. Optional; default
	// false.
	Concurrent bool
}

// Validate reports every problem with the config.
func (c Config) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, fmt.Errorf("%w: URL is required (amqp://user:pass@host:5672/vhost)", ErrInvalidConfig))
	} else if _, err := amqp091.ParseURI(c.URL); err != nil {
		errs = append(errs, fmt.Errorf("%w: URL: %v", ErrInvalidConfig, err))
	}
	if c.ConnectTimeout < 0 {
		errs = append(errs, fmt.Errorf("%w: ConnectTimeout is negative (use 0 for the default)", ErrInvalidConfig))
	}
	if c.ConfirmTimeout < 0 {
		errs = append(errs, fmt.Errorf("%w: ConfirmTimeout is negative (use 0 for the default)", ErrInvalidConfig))
	}
	if c.Prefetch < 0 {
		errs = append(errs, fmt.Errorf("%w: Prefetch is negative (use 0 for the default)", ErrInvalidConfig))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	c.ConnectTimeout = cmp.Or(c.ConnectTimeout, DefaultConnectTimeout)
	c.ConfirmTimeout = cmp.Or(c.ConfirmTimeout, DefaultConfirmTimeout)
	c.Prefetch = cmp.Or(c.Prefetch, DefaultPrefetch)
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	if c.Queue == nil {
		c.Queue = func(topic string) string { return topic }
	}
	return c
}

func (c Config) dialConfig() amqp091.Config {
	return amqp091.Config{
		Dial:      amqp091.DefaultDial(c.ConnectTimeout),
		Heartbeat: DefaultHeartbeat,
		Locale:    "en_US",
	}
}

// Publisher publishes to RabbitMQ with publisher confirms and mandatory
// routing. It is safe for concurrent use; concurrent Publish calls use
// channels of their own. Create it with NewPublisher.
type Publisher struct {
	cfg       Config
	marshaler wamqp.DefaultMarshaler

	mu       sync.Mutex
	conn     *amqp091.Connection
	idle     []*pubChannel
	declared map[string]bool // queues declared on conn
	closed   bool
}

// pubChannel is a channel in confirm mode with its return listener.
type pubChannel struct {
	ch      *amqp091.Channel
	conn    *amqp091.Connection
	returns chan amqp091.Return
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher connects to RabbitMQ. It fails when the config is invalid or
// the broker does not answer within Config.ConnectTimeout. Later
// connection losses are repaired by Publish.
func NewPublisher(ctx context.Context, cfg Config) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Publisher{cfg: cfg.withDefaults()}
	if err := p.Ping(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// Publish sends msgs to topic's queue and returns nil once RabbitMQ has
// confirmed every one of them and returned none as unroutable. All of
// msgs are sent before the first confirm is awaited. On an error some of
// msgs may still have reached the queue; publishing them again is safe for
// consumers that deduplicate on the message UUID.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	queue := p.cfg.Queue(topic)
	pc, err := p.channel(queue)
	if err != nil {
		return fmt.Errorf("amqp: publish to %s: %w", queue, err)
	}
	if err := p.publish(pc, queue, msgs); err != nil {
		p.discard(pc)
		return fmt.Errorf("amqp: publish to %s: %w", queue, unavail.IfNetwork(err))
	}
	p.release(pc)
	return nil
}

func (p *Publisher) publish(pc *pubChannel, queue string, msgs []*message.Message) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ConfirmTimeout)
	defer cancel()
	confirms := make([]*amqp091.DeferredConfirmation, 0, len(msgs))
	for _, msg := range msgs {
		pub, err := p.marshaler.Marshal(msg)
		if err != nil {
			return fmt.Errorf("marshal message %s: %w", msg.UUID, err)
		}
		pub.MessageId = msg.UUID
		dc, err := pc.ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, pub)
		if err != nil {
			if pc.ch.IsClosed() {
				err = unavail.Mark(err)
			}
			return err
		}
		confirms = append(confirms, dc)
	}
	var returned []amqp091.Return
	returns := pc.returns // nil once closed, so that select skips it
	for _, dc := range confirms {
		for waiting := true; waiting; {
			select {
			case <-dc.Done():
				waiting = false
			case r, ok := <-returns:
				if !ok {
					returns = nil
					continue
				}
				returned = append(returned, r)
			case <-ctx.Done():
				return fmt.Errorf("%w: no confirm within %v", ErrNacked, p.cfg.ConfirmTimeout)
			}
		}
	}
	// RabbitMQ sends a message's basic.return before its basic.ack, and
	// the client hands it over before it reads the ack: every return of
	// this call is here or buffered now.
	for drained := returns == nil; !drained; {
		select {
		case r, ok := <-returns:
			if !ok {
				drained = true
				break
			}
			returned = append(returned, r)
		default:
			drained = true
		}
	}
	if len(returned) > 0 {
		r := returned[0]
		return fmt.Errorf("%w: RabbitMQ returned %d of %d messages (first %s: %d %s); declare the queue or bind one to the exchange",
			ErrUnroutable, len(returned), len(msgs), r.MessageId, r.ReplyCode, r.ReplyText)
	}
	nacked := 0
	for _, dc := range confirms {
		if !dc.Acked() {
			nacked++
		}
	}
	if nacked > 0 {
		if pc.ch.IsClosed() {
			return unavail.Mark(fmt.Errorf("%w: the channel closed with %d of %d messages unconfirmed", ErrNacked, nacked, len(msgs)))
		}
		return fmt.Errorf("%w: RabbitMQ nacked %d of %d messages", ErrNacked, nacked, len(msgs))
	}
	return nil
}

// channel returns an idle confirm-mode channel, or a new one, on a live
// connection on which queue is declared.
func (p *Publisher) channel(queue string) (*pubChannel, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	if err := p.connectLocked(context.Background()); err != nil {
		return nil, unavail.Mark(err)
	}
	var pc *pubChannel
	for len(p.idle) > 0 && pc == nil {
		c := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if c.conn == p.conn && !c.ch.IsClosed() {
			pc = c
		}
	}
	if pc == nil {
		var err error
		if pc, err = p.openChannelLocked(); err != nil {
			return nil, unavail.Mark(err) // the connection is going away
		}
	}
	if !p.declared[queue] {
		if _, err := pc.ch.QueueDeclare(queue, true, false, false, false, p.cfg.QueueArguments); err != nil {
			// A failed declare closes the channel.
			return nil, fmt.Errorf("declare queue: %w", err)
		}
		p.declared[queue] = true
	}
	return pc, nil
}

func (p *Publisher) openChannelLocked() (*pubChannel, error) {
	ch, err := p.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("confirm mode: %w", err)
	}
	return &pubChannel{ch: ch, conn: p.conn, returns: ch.NotifyReturn(make(chan amqp091.Return, 64))}, nil
}

// connectLocked dials when there is no live connection.
func (p *Publisher) connectLocked(ctx context.Context) error {
	if p.conn != nil && !p.conn.IsClosed() {
		return nil
	}
	if p.conn != nil {
		_ = p.conn.Close()
		p.conn, p.idle, p.declared = nil, nil, nil
	}
	conn, err := dial(ctx, p.cfg)
	if err != nil {
		return err
	}
	p.conn, p.declared = conn, map[string]bool{}
	return nil
}

func (p *Publisher) release(pc *pubChannel) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed && pc.conn == p.conn && !pc.ch.IsClosed() {
		p.idle = append(p.idle, pc)
		return
	}
	closeChannel(pc)
}

// discard closes a channel that failed: its confirms and returns can no
// longer be matched to a call.
func (p *Publisher) discard(pc *pubChannel) { closeChannel(pc) }

func closeChannel(pc *pubChannel) {
	// The client's reader blocks on a full return listener; drain it
	// until the channel is closed.
	go func() {
		for range pc.returns {
		}
	}()
	_ = pc.ch.Close()
}

// Ping connects when the publisher has no live connection and reports
// whether it has one now.
func (p *Publisher) Ping(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	return p.connectLocked(ctx)
}

// DeleteTopic deletes topic's queue and the messages in it. It is meant
// for tests and tools.
func (p *Publisher) DeleteTopic(ctx context.Context, topic string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	if err := p.connectLocked(ctx); err != nil {
		return err
	}
	ch, err := p.conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	queue := p.cfg.Queue(topic)
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		return fmt.Errorf("amqp: delete queue %s: %w", queue, err)
	}
	delete(p.declared, queue)
	return nil
}

// Close closes the connection. A Publish in flight fails.
func (p *Publisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	for _, pc := range p.idle {
		closeChannel(pc)
	}
	p.idle = nil
	if p.conn == nil {
		return nil
	}
	err := p.conn.Close()
	if errors.Is(err, amqp091.ErrClosed) {
		err = nil
	}
	return err
}

// redact hides the password of an AMQP URL.
func redact(raw string) string {
	u, err := amqp091.ParseURI(raw)
	if err != nil || u.Password == "" {
		return raw
	}
	return strings.Replace(raw, ":"+u.Password+"@", ":xxxxx@", 1)
}
