package redisstream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"github.com/txoutbox/txoutbox/brokers/internal/unavail"
)

// Defaults of Config.
const (
	DefaultConnectTimeout  = 5 * time.Second
	DefaultPublishTimeout  = 10 * time.Second
	DefaultMaxLen          = 0
	DefaultNackResendSleep = 100 * time.Millisecond
)

var (
	// ErrInvalidConfig wraps every problem Config.Validate reports.
	ErrInvalidConfig = errors.New("redisstream: invalid config")
	// ErrClosed is returned by Publish, Ping and DeleteTopic after Close.
	ErrClosed = errors.New("redisstream: publisher closed")
)

// Config configures a Publisher and a subscriber.
type Config struct {
	// Options are the go-redis options of the server (parse a redis://
	// URL with redis.ParseURL). Each of NewPublisher and NewSubscriber
	// makes a client of its own from a copy, with ContextTimeoutEnabled
	// set. Required.
	Options *redis.Options
	// ConsumerGroup is the Redis Streams consumer group of the subscriber;
	// consumers of one group share a stream's entries. Required by
	// NewSubscriber, ignored by NewPublisher.
	ConsumerGroup string
	// ConnectTimeout bounds NewPublisher and NewSubscriber (the first
	// PING), and is the clients' dial timeout unless Options.DialTimeout
	// is set. Optional; default DefaultConnectTimeout (5s).
	ConnectTimeout time.Duration
	// Logger receives the clients' logs. Optional; default
	// watermill.NopLogger.
	Logger watermill.LoggerAdapter

	// PublishTimeout bounds one Publish call. Optional; default
	// DefaultPublishTimeout (10s).
	PublishTimeout time.Duration
	// MaxLen, when positive, trims every stream Publish adds to to about
	// MaxLen entries (XADD MAXLEN ~ MaxLen): Redis drops the oldest
	// entries in whole macro-nodes only, so a stream keeps at least MaxLen
	// entries and at most about MaxLen plus stream-node-max-entries (100
	// by default). Trimming drops entries whether or not every consumer
	// group has read them: a group that lags more than MaxLen entries
	// behind loses events. Optional; default DefaultMaxLen (0): no
	// trimming, streams grow until trimmed otherwise (XTRIM, or
	// DeleteTopic), because an outbox must not lose an event a consumer
	// has not read.
	MaxLen int64
	// NackResendSleep is how long the subscriber waits before it delivers
	// a nacked message again. Optional; default DefaultNackResendSleep
	// (100ms).
	NackResendSleep time.Duration
}

// Validate reports every problem with the config.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if c.Options == nil {
		add("Options is required (parse a URL with redis.ParseURL(\"redis://:password@host:6379/0\"))")
	}
	neg := func(name string, v int64) {
		if v < 0 {
			add("%s is negative (use 0 for the default)", name)
		}
	}
	neg("ConnectTimeout", int64(c.ConnectTimeout))
	neg("PublishTimeout", int64(c.PublishTimeout))
	neg("MaxLen", c.MaxLen)
	neg("NackResendSleep", int64(c.NackResendSleep))
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	c.ConnectTimeout = cmp.Or(c.ConnectTimeout, DefaultConnectTimeout)
	c.PublishTimeout = cmp.Or(c.PublishTimeout, DefaultPublishTimeout)
	c.NackResendSleep = cmp.Or(c.NackResendSleep, DefaultNackResendSleep)
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	return c
}

// connect makes a client of its own and pings the server within
// ConnectTimeout (and ctx).
func (c Config) connect(ctx context.Context) (*redis.Client, error) {
	o := *c.Options
	o.DialTimeout = cmp.Or(o.DialTimeout, c.ConnectTimeout)
	// Deadlines of contexts bound commands, so ConnectTimeout bounds the
	// first PING and PublishTimeout a Publish, also against a server that
	// accepts connections and never answers.
	o.ContextTimeoutEnabled = true
	client := redis.NewClient(&o)
	ctx, cancel := context.WithTimeout(ctx, c.ConnectTimeout)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("redisstream: connect to %s: %w", o.Addr, err)
	}
	return client, nil
}

// Publisher publishes to Redis Streams: a Publish call adds all its
// messages in one MULTI/EXEC transaction, one round trip. It is safe for
// concurrent use. Create it with NewPublisher.
type Publisher struct {
	cfg       Config
	client    *redis.Client
	marshaler wredis.DefaultMarshallerUnmarshaller

	closing   chan struct{}
	closeOnce sync.Once
	closeErr  error
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher connects to Redis with a client of its own. It fails when
// the config is invalid or Redis does not answer within
// Config.ConnectTimeout. After that the client reconnects by itself, per
// command: Publish fails while Redis is down and succeeds again once it is
// back.
func NewPublisher(ctx context.Context, cfg Config) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	client, err := cfg.connect(ctx)
	if err != nil {
		return nil, err
	}
	return &Publisher{cfg: cfg, client: client, closing: make(chan struct{})}, nil
}

// Publish adds msgs to the stream topic, in order, and returns nil once
// Redis replied with an entry ID for every one of them. The messages go in
// one MULTI/EXEC transaction sent in one round trip: Redis adds all of them
// or, when the transaction is aborted or the connection breaks before
// EXEC, none. Only when the connection breaks after EXEC reached Redis
// does Publish fail for messages that were added.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if p.isClosed() {
		return ErrClosed
	}
	if len(msgs) == 0 {
		return nil
	}
	if topic == "" {
		return errors.New("redisstream: publish: empty topic")
	}
	values := make([]map[string]any, len(msgs))
	for i, msg := range msgs {
		v, err := p.marshaler.Marshal(topic, msg)
		if err != nil {
			return fmt.Errorf("redisstream: publish to %s: message %d of %d (%s): %w", topic, i+1, len(msgs), msg.UUID, err)
		}
		values[i] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.PublishTimeout)
	defer cancel()
	cmds := make([]*redis.StringCmd, len(msgs))
	_, err := p.client.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, v := range values {
			cmds[i] = pipe.XAdd(ctx, &redis.XAddArgs{
				Stream: topic,
				Values: v,
				MaxLen: p.cfg.MaxLen,
				Approx: p.cfg.MaxLen > 0,
			})
		}
		return nil
	})
	var (
		failed   int
		firstErr error
	)
	for i, c := range cmds {
		if e := c.Err(); e != nil {
			if failed == 0 {
				firstErr = fmt.Errorf("message %d (%s): %w", i+1, msgs[i].UUID, e)
			}
			failed++
		} else if c.Val() == "" {
			if failed == 0 {
				firstErr = fmt.Errorf("message %d (%s): no entry ID in the reply", i+1, msgs[i].UUID)
			}
			failed++
		}
	}
	if failed == 0 && err == nil {
		return nil
	}
	if p.isClosed() {
		return fmt.Errorf("redisstream: publish to %s: %w", topic, ErrClosed)
	}
	if err != nil && !errors.Is(firstErr, err) {
		// The transaction failed as a whole (no connection, EXECABORT):
		// that is the error, whatever the commands recorded.
		return fmt.Errorf("redisstream: publish %d messages to %s: %w", len(msgs), topic, unavail.IfNetwork(err))
	}
	return fmt.Errorf("redisstream: publish to %s: %d of %d messages failed, first %w", topic, failed, len(msgs), firstErr)
}

// Ping sends PING and returns nil when Redis answers.
func (p *Publisher) Ping(ctx context.Context) error {
	if p.isClosed() {
		return ErrClosed
	}
	if err := p.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redisstream: ping %s: %w", p.client.Options().Addr, err)
	}
	return nil
}

// DeleteTopic deletes the stream topic, with its entries and consumer
// groups. It returns nil when there is no such key, and refuses to delete
// a key of topic's name that is not a stream.
func (p *Publisher) DeleteTopic(ctx context.Context, topic string) error {
	if p.isClosed() {
		return ErrClosed
	}
	typ, err := p.client.Type(ctx, topic).Result()
	if err != nil {
		return fmt.Errorf("redisstream: delete stream %s: %w", topic, err)
	}
	switch typ {
	case "none":
		return nil
	case "stream":
	default:
		return fmt.Errorf("redisstream: delete stream %s: the key is a %s, not a stream; left alone", topic, typ)
	}
	if err := p.client.Del(ctx, topic).Err(); err != nil {
		return fmt.Errorf("redisstream: delete stream %s: %w", topic, err)
	}
	return nil
}

// Close closes the publisher's client. Publish after Close returns
// ErrClosed. Close is safe to call more than once.
func (p *Publisher) Close() error {
	p.closeOnce.Do(func() {
		close(p.closing)
		p.closeErr = p.client.Close()
	})
	return p.closeErr
}

func (p *Publisher) isClosed() bool {
	select {
	case <-p.closing:
		return true
	default:
		return false
	}
}

// NewSubscriber connects a client of its own (the publisher closes its
// client when it closes) and returns the watermill-redisstream subscriber
// on it, reading with DefaultMarshallerUnmarshaller what the Publisher
// adds: consumer group ConsumerGroup, created on the first Subscribe of a
// stream (with the stream, if missing) from ID 0, so a new group reads
// the entries added before it existed. The first read blocks for
// watermill-redisstream's BlockTime (100ms) only
// (DisableIndefiniteInitialBlock), so Close stops it. The subscriber
// closes its client when it closes.
func NewSubscriber(ctx context.Context, cfg Config) (message.Subscriber, error) {
	err := cfg.Validate()
	if cfg.ConsumerGroup == "" {
		err = errors.Join(err, fmt.Errorf("%w: ConsumerGroup is required by NewSubscriber (it names the Redis consumer group)", ErrInvalidConfig))
	}
	if err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	client, err := cfg.connect(ctx)
	if err != nil {
		return nil, err
	}
	sub, err := wredis.NewSubscriber(wredis.SubscriberConfig{
		Client:          client,
		Unmarshaller:    wredis.DefaultMarshallerUnmarshaller{},
		ConsumerGroup:   cfg.ConsumerGroup,
		NackResendSleep: cfg.NackResendSleep,
		OldestId:        "0",
		// Without it the first XREADGROUP blocks forever on an empty
		// stream and Close cannot stop it.
		DisableIndefiniteInitialBlock: true,
	}, cfg.Logger)
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("redisstream: new subscriber: %w", err)
	}
	return sub, nil
}
