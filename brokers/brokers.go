package brokers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/txoutbox/txoutbox/brokers/amqp"
	"github.com/txoutbox/txoutbox/brokers/internal/unavail"
	"github.com/txoutbox/txoutbox/brokers/kafka"
	"github.com/txoutbox/txoutbox/brokers/natsjs"
	"github.com/txoutbox/txoutbox/brokers/redisstream"
)

// Defaults of Options.
const (
	DefaultConnectTimeout = 5 * time.Second
	DefaultMinReconnect   = time.Second
	DefaultMaxReconnect   = 30 * time.Second
)

var (
	// ErrUnreachable is wrapped by the errors of a Broker that is not
	// connected: Publish, Health and WaitConnected return it until the
	// broker answers.
	ErrUnreachable = errors.New("broker unreachable")
	// ErrInvalidOptions wraps every problem Open finds in its Options.
	ErrInvalidOptions = errors.New("brokers: invalid options")
	// ErrClosed is returned by a Broker's Publisher, Subscriber and
	// WaitConnected after Close.
	ErrClosed = errors.New("brokers: broker closed")
)

// Options tune Open. Only ConsumerGroup is required, and not for GoChannel.
type Options struct {
	// ConsumerGroup names the consumer: the Kafka consumer group, the Redis
	// Streams consumer group and the NATS JetStream durable consumer (with
	// the topic appended). On AMQP the queue is named after the topic and
	// the consumers of a topic compete on it. Required for every broker but
	// GoChannel; only letters, digits, '-' and '_'.
	ConsumerGroup string
	// ConnectTimeout bounds each connection attempt. Optional; default
	// DefaultConnectTimeout (5s).
	ConnectTimeout time.Duration
	// MinReconnect is the wait after the first failed connection attempt;
	// it doubles per failed attempt up to MaxReconnect. Optional; defaults
	// DefaultMinReconnect (1s) and DefaultMaxReconnect (30s).
	MinReconnect time.Duration
	// MaxReconnect caps the wait between connection attempts.
	MaxReconnect time.Duration
	// Logger receives connection state changes, and the broker clients'
	// logs with their info lines lowered to debug. Optional; default
	// slog.Default().
	Logger *slog.Logger

	// AMQP, NATS, Redis and Kafka tune the broker the URL names: Open
	// starts from the one of that broker, fills in the address from the
	// URL and, where they are zero, ConsumerGroup, ConnectTimeout and
	// Logger from these Options. Optional.
	AMQP amqp.Config
	// NATS tunes NATS JetStream; see AMQP.
	NATS natsjs.Config
	// Redis tunes Redis Streams; see AMQP.
	Redis redisstream.Config
	// Kafka tunes Kafka; see AMQP.
	Kafka kafka.Config
}

// client is what each broker package's Publisher offers.
type client interface {
	message.Publisher
	Ping(ctx context.Context) error
	DeleteTopic(ctx context.Context, topic string) error
}

// backend connects one broker.
type backend struct {
	newPublisher  func(ctx context.Context) (client, error)
	newSubscriber func(ctx context.Context) (message.Subscriber, error)
}

// Broker is a publisher and a subscriber on one broker, connected in the
// background: an application that opens it starts without waiting for
// the broker, takes commands while it is down (the events wait in the
// outbox), and relays once it answers. Get one from Open.
type Broker struct {
	// Kind is the broker.
	Kind Kind
	// Publisher publishes to the broker; the outbox forwarder uses it.
	// While the broker has never answered, Publish fails at once with an
	// error wrapping ErrUnreachable; after that, the broker package's
	// publisher handles outages (see its documentation). Every error that
	// says the broker cannot be reached, here or in the broker packages,
	// also matches outbox.ErrPublisherUnavailable, so the forwarder backs
	// off and parks nothing while the broker is away. Its Close does
	// nothing: Broker.Close closes it.
	Publisher message.Publisher
	// Subscriber subscribes to the broker; the consumers use it. Subscribe
	// returns at once; messages flow once the broker answers. A Watermill
	// Router closes it when the router closes.
	Subscriber message.Subscriber

	cfg     Config
	opts    Options
	backend backend
	log     *slog.Logger

	connected chan struct{} // closed on the first connection
	closing   chan struct{}
	loopDone  chan struct{}

	mu      sync.Mutex
	client  client // nil until connected
	lastErr error
	since   time.Time // of the current state

	closeOnce sync.Once
	closeErr  error
}

// Open checks url (see ParseURL) and opts, then connects to the broker. It
// waits for the first connection attempt, at most Options.ConnectTimeout;
// when the broker does not answer it logs a warning and returns a Broker
// that keeps trying in the background, with backoff. Only a malformed URL
// or invalid options make Open fail. Call Close when done.
func Open(ctx context.Context, url string, opts Options) (*Broker, error) {
	cfg, err := ParseURL(url)
	if err != nil {
		return nil, err
	}
	return OpenConfig(ctx, cfg, opts)
}

// OpenConfig is Open with a URL already parsed.
func OpenConfig(ctx context.Context, cfg Config, opts Options) (*Broker, error) {
	opts.ConnectTimeout = cmp.Or(opts.ConnectTimeout, DefaultConnectTimeout)
	opts.MinReconnect = cmp.Or(opts.MinReconnect, DefaultMinReconnect)
	opts.MaxReconnect = cmp.Or(opts.MaxReconnect, DefaultMaxReconnect)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	var errs []error
	if opts.ConnectTimeout < 0 || opts.MinReconnect < 0 || opts.MaxReconnect < 0 {
		errs = append(errs, fmt.Errorf("%w: ConnectTimeout, MinReconnect and MaxReconnect must not be negative (use 0 for the defaults)", ErrInvalidOptions))
	}
	if opts.MinReconnect > opts.MaxReconnect {
		errs = append(errs, fmt.Errorf("%w: MinReconnect %v is larger than MaxReconnect %v", ErrInvalidOptions, opts.MinReconnect, opts.MaxReconnect))
	}
	if cfg.Kind != GoChannel {
		if err := validGroup(opts.ConsumerGroup); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	be, err := newBackend(cfg, opts)
	if err != nil {
		return nil, err
	}
	b := &Broker{
		Kind:      cfg.Kind,
		cfg:       cfg,
		opts:      opts,
		backend:   be,
		log:       opts.Logger.With("broker", cfg.String()),
		connected: make(chan struct{}),
		closing:   make(chan struct{}),
		loopDone:  make(chan struct{}),
		since:     time.Now(),
		lastErr:   errors.New("not connected yet"),
	}
	b.Publisher = &publisher{b: b}
	b.Subscriber = newSubscriber(b)
	if b.connect(ctx) {
		close(b.loopDone)
		return b, nil
	}
	b.log.Warn("broker not reachable; retrying in the background (commands are accepted, events wait in the outbox)",
		"error", b.lastErr, "retry_in", opts.MinReconnect)
	go b.reconnectLoop()
	return b, nil
}

func validGroup(g string) error {
	if g == "" {
		return fmt.Errorf("%w: ConsumerGroup is required", ErrInvalidOptions)
	}
	for _, r := range g {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("%w: consumer group %q: only letters, digits, '-' and '_' are allowed", ErrInvalidOptions, g)
		}
	}
	return nil
}

// newBackend builds the broker package's config and checks it.
func newBackend(cfg Config, opts Options) (backend, error) {
	wlog := watermill.NewSlogLoggerWithLevelMapping(opts.Logger, map[slog.Level]slog.Level{
		slog.LevelInfo: slog.LevelDebug,
	})
	switch cfg.Kind {
	case GoChannel:
		// BlockPublishUntilSubscriberAck keeps the order of a key: without
		// it GoChannel delivers every message from a goroutine of its own.
		gc := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, wlog)
		return backend{
			newPublisher:  func(context.Context) (client, error) { return goChannel{gc}, nil },
			newSubscriber: func(context.Context) (message.Subscriber, error) { return gc, nil },
		}, nil
	case AMQP:
		c := opts.AMQP
		c.URL = cfg.URL
		c.ConsumerGroup = cmp.Or(c.ConsumerGroup, opts.ConsumerGroup)
		c.ConnectTimeout = cmp.Or(c.ConnectTimeout, opts.ConnectTimeout)
		c.Logger = cmp.Or[watermill.LoggerAdapter](c.Logger, wlog)
		return backendFor(c, amqp.NewPublisher, amqp.NewSubscriber)
	case NATS:
		c := opts.NATS
		c.URL = cfg.URL
		c.ConsumerGroup = cmp.Or(c.ConsumerGroup, opts.ConsumerGroup)
		c.ConnectTimeout = cmp.Or(c.ConnectTimeout, opts.ConnectTimeout)
		c.Logger = cmp.Or[watermill.LoggerAdapter](c.Logger, wlog)
		return backendFor(c, natsjs.NewPublisher, natsjs.NewSubscriber)
	case Redis:
		c := opts.Redis
		c.Options = cfg.Redis
		c.ConsumerGroup = cmp.Or(c.ConsumerGroup, opts.ConsumerGroup)
		c.ConnectTimeout = cmp.Or(c.ConnectTimeout, opts.ConnectTimeout)
		c.Logger = cmp.Or[watermill.LoggerAdapter](c.Logger, wlog)
		return backendFor(c, redisstream.NewPublisher, redisstream.NewSubscriber)
	case Kafka:
		c := opts.Kafka
		c.Brokers = cfg.KafkaBrokers
		c.ConsumerGroup = cmp.Or(c.ConsumerGroup, opts.ConsumerGroup)
		c.ConnectTimeout = cmp.Or(c.ConnectTimeout, opts.ConnectTimeout)
		c.Logger = cmp.Or[watermill.LoggerAdapter](c.Logger, wlog)
		return backendFor(c, kafka.NewPublisher, kafka.NewSubscriber)
	}
	return backend{}, fmt.Errorf("%w: unknown broker kind %q", ErrInvalidURL, cfg.Kind)
}

// backendFor checks a broker package's config c and returns the backend
// that connects with it.
func backendFor[C interface{ Validate() error }, P client, S message.Subscriber](
	c C,
	newPublisher func(context.Context, C) (P, error),
	newSubscriber func(context.Context, C) (S, error),
) (backend, error) {
	if err := c.Validate(); err != nil {
		return backend{}, err
	}
	// On an error the constructors return a nil pointer, which must not
	// become a non-nil interface value.
	return backend{
		newPublisher: func(ctx context.Context) (client, error) {
			p, err := newPublisher(ctx, c)
			if err != nil {
				return nil, err
			}
			return p, nil
		},
		newSubscriber: func(ctx context.Context) (message.Subscriber, error) {
			s, err := newSubscriber(ctx, c)
			if err != nil {
				return nil, err
			}
			return s, nil
		},
	}, nil
}

// connect makes one connection attempt and reports whether it succeeded.
func (b *Broker) connect(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, b.opts.ConnectTimeout)
	defer cancel()
	c, err := b.backend.newPublisher(ctx)
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.closing:
		if err == nil {
			_ = c.Close()
		}
		return true // stop trying
	default:
	}
	if err != nil {
		b.lastErr = err
		return false
	}
	b.client, b.lastErr, b.since = c, nil, time.Now()
	close(b.connected)
	return true
}

func (b *Broker) reconnectLoop() {
	defer close(b.loopDone)
	wait := b.opts.MinReconnect
	for attempt := 2; ; attempt++ {
		select {
		case <-b.closing:
			return
		case <-time.After(wait):
		}
		if b.connect(context.Background()) {
			select {
			case <-b.connected:
				b.log.Info("broker connected", "attempts", attempt)
			default:
			}
			return
		}
		wait = min(2*wait, b.opts.MaxReconnect)
		b.mu.Lock()
		err := b.lastErr
		b.mu.Unlock()
		// The first failure was logged as a warning; the rest would flood.
		b.log.Debug("broker still not reachable", "attempt", attempt, "error", err, "retry_in", wait)
	}
}

// WaitConnected blocks until the broker has answered once, ctx ends, or
// the Broker is closed. Use it where publishing without a broker makes no
// sense, such as a command-line tool.
func (b *Broker) WaitConnected(ctx context.Context) error {
	select {
	case <-b.connected:
		return nil
	case <-b.closing:
		return ErrClosed
	case <-ctx.Done():
		b.mu.Lock()
		defer b.mu.Unlock()
		return fmt.Errorf("%w: %s: %w (%w)", ErrUnreachable, b.cfg, b.lastErr, ctx.Err())
	}
}

// Health reports whether the broker answers now: nil when it does, an
// error wrapping ErrUnreachable when it does not. It asks the broker (a
// cheap round trip at most, bounded by ctx and Options.ConnectTimeout),
// so call it from a health endpoint, not per message.
func (b *Broker) Health(ctx context.Context) error {
	c, err := b.currentClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, b.opts.ConnectTimeout)
	defer cancel()
	if err := c.Ping(ctx); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrUnreachable, b.cfg, err)
	}
	return nil
}

func (b *Broker) currentClient() (client, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.closing:
		return nil, ErrClosed
	default:
	}
	if b.client == nil {
		return nil, fmt.Errorf("%w: %s: %w (not connected for %v)", ErrUnreachable, b.cfg, b.lastErr,
			time.Since(b.since).Round(time.Second))
	}
	return b.client, nil
}

// DeleteTopic removes what the broker keeps for topic (the AMQP queue, the
// NATS stream and its consumers, the Redis stream, the Kafka topic). It
// does nothing for GoChannel, which keeps nothing. It is meant for tests
// and tools; call it before Close.
func (b *Broker) DeleteTopic(ctx context.Context, topic string) error {
	c, err := b.currentClient()
	if err != nil {
		return err
	}
	return c.DeleteTopic(ctx, topic)
}

// String describes the broker without credentials, for log lines.
func (b *Broker) String() string { return b.cfg.String() }

// Close stops connecting, then closes the subscriber and the publisher. It
// is safe to call more than once, also after a Router closed the
// subscriber.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		close(b.closing)
		b.mu.Unlock()
		<-b.loopDone
		errs := []error{b.Subscriber.Close()}
		b.mu.Lock()
		c := b.client
		b.mu.Unlock()
		if c != nil {
			errs = append(errs, c.Close())
		}
		b.closeErr = errors.Join(errs...)
	})
	return b.closeErr
}

// publisher is Broker.Publisher.
type publisher struct{ b *Broker }

// Publish publishes through the broker package's publisher, or fails with
// ErrUnreachable while the broker has never answered.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
	c, err := p.b.currentClient()
	if err != nil {
		if errors.Is(err, ErrUnreachable) {
			err = unavail.Mark(err) // the forwarder parks nothing meanwhile
		}
		return err
	}
	return c.Publish(topic, msgs...)
}

// Close does nothing: the publisher is shared by everything that
// publishes through the Broker (a Watermill Router may close the
// publishers it was given), and Broker.Close closes it.
func (p *publisher) Close() error { return nil }

// goChannel gives Watermill's GoChannel the client methods.
type goChannel struct{ *gochannel.GoChannel }

func (goChannel) Ping(context.Context) error                { return nil }
func (goChannel) DeleteTopic(context.Context, string) error { return nil }
