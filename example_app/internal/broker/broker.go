package broker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/nats-io/nats.go"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/txoutbox/txoutbox/outbox"
)

// DefaultConnectTimeout is the default Options.ConnectTimeout.
const DefaultConnectTimeout = 5 * time.Second

// ErrUnreachable is returned by Open when the broker does not answer.
var ErrUnreachable = errors.New("broker unreachable")

// Options tune Open. The zero value is valid except for ConsumerGroup.
type Options struct {
	// ConsumerGroup names the consumer: the Kafka consumer group, the Redis
	// Streams consumer group and the NATS JetStream durable consumer (with
	// the topic appended). On AMQP the queue is named after the topic and
	// the consumers of a topic compete on it. Required for every broker but
	// GoChannel; only letters, digits, '-' and '_'.
	ConsumerGroup string
	// ConnectTimeout bounds connecting to the broker. Optional; default
	// DefaultConnectTimeout (5s).
	ConnectTimeout time.Duration
	// Logger receives the Watermill clients' logs. Optional; default
	// watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

// Broker is a connected Watermill publisher and subscriber pair.
type Broker struct {
	// Kind is the broker.
	Kind Kind
	// Publisher publishes to the broker; the outbox forwarder uses it.
	Publisher message.Publisher
	// Subscriber subscribes to the broker; the consumers use it. A
	// Watermill Router closes it when the router closes.
	Subscriber message.Subscriber

	deleteTopic func(ctx context.Context, topic string) error
	closers     []func() error
	closeOnce   sync.Once
	closeErr    error
}

// Open connects to the broker cfg names. It fails within about
// Options.ConnectTimeout with an error wrapping ErrUnreachable when the
// broker cannot be reached.
func Open(ctx context.Context, cfg Config, opts Options) (*Broker, error) {
	opts.ConnectTimeout = cmp.Or(opts.ConnectTimeout, DefaultConnectTimeout)
	if opts.Logger == nil {
		opts.Logger = watermill.NopLogger{}
	}
	if cfg.Kind != GoChannel {
		if err := validGroup(opts.ConsumerGroup); err != nil {
			return nil, err
		}
	}

	type result struct {
		b   *Broker
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := open(ctx, cfg, opts)
		done <- result{b, err}
	}()
	// The clients have their own timeouts; this one is the backstop for a
	// client that blocks past its own.
	timer := time.NewTimer(opts.ConnectTimeout + 2*time.Second)
	defer timer.Stop()
	abandon := func() {
		go func() {
			if r := <-done; r.b != nil {
				_ = r.b.Close()
			}
		}()
	}
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrUnreachable, cfg, r.err)
		}
		return r.b, nil
	case <-timer.C:
		abandon()
		return nil, fmt.Errorf("%w: %s did not answer within %v", ErrUnreachable, cfg, opts.ConnectTimeout)
	case <-ctx.Done():
		abandon()
		return nil, ctx.Err()
	}
}

func validGroup(g string) error {
	if g == "" {
		return errors.New("broker: Options.ConsumerGroup is required")
	}
	for _, r := range g {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("broker: consumer group %q: only letters, digits, '-' and '_' are allowed", g)
		}
	}
	return nil
}

func open(ctx context.Context, cfg Config, opts Options) (*Broker, error) {
	switch cfg.Kind {
	case GoChannel:
		return openGoChannel(opts), nil
	case AMQP:
		return openAMQP(cfg, opts)
	case NATS:
		return openNATS(cfg, opts)
	case Redis:
		return openRedis(ctx, cfg, opts)
	case Kafka:
		return openKafka(cfg, opts)
	}
	return nil, fmt.Errorf("%w: unknown broker kind %q", ErrInvalidURL, cfg.Kind)
}

// DeleteTopic removes what the broker keeps for topic (the AMQP queue, the
// NATS stream and its consumers, the Redis stream). It does nothing for
// GoChannel, which keeps nothing, and for Kafka, whose topics are left to
// the cluster's administrators. Call it before Close.
func (b *Broker) DeleteTopic(ctx context.Context, topic string) error {
	if b.deleteTopic == nil {
		return nil
	}
	return b.deleteTopic(ctx, topic)
}

// Close closes the publisher, the subscriber and the connections. It is
// safe to call more than once, also after a Router closed the subscriber.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		var errs []error
		for _, c := range b.closers {
			errs = append(errs, c())
		}
		b.closeErr = errors.Join(errs...)
	})
	return b.closeErr
}

// ------------------------------------------------------------- GoChannel

func openGoChannel(opts Options) *Broker {
	// BlockPublishUntilSubscriberAck keeps the order of a key: without it
	// GoChannel delivers every message from a goroutine of its own.
	gc := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, opts.Logger)
	return &Broker{Kind: GoChannel, Publisher: gc, Subscriber: gc, closers: []func() error{gc.Close}}
}

// ------------------------------------------------------------------ AMQP

// amqpConfig is watermill-amqp's durable-queue config (a durable queue per
// topic on the default exchange) with publisher confirms on: without them a
// message written to the socket just before the broker fails counts as
// published and can be lost.
func amqpConfig(url string, timeout time.Duration) wamqp.Config {
	c := wamqp.NewDurableQueueConfig(url)
	c.Publish.ConfirmDelivery = true
	c.Connection.AmqpConfig = &amqp091.Config{
		Dial:      amqp091.DefaultDial(timeout),
		Heartbeat: 10 * time.Second,
		Locale:    "en_US",
	}
	return c
}

func openAMQP(cfg Config, opts Options) (*Broker, error) {
	c := amqpConfig(cfg.URL, opts.ConnectTimeout)
	conn, err := wamqp.NewConnection(c.Connection, opts.Logger)
	if err != nil {
		return nil, err
	}
	pub, err := wamqp.NewPublisherWithConnection(c, opts.Logger, conn)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	sub, err := wamqp.NewSubscriberWithConnection(c, opts.Logger, conn)
	if err != nil {
		_ = pub.Close()
		_ = conn.Close()
		return nil, err
	}
	queue := c.Queue.GenerateName
	withChannel := func(fn func(ch *amqp091.Channel) error) error {
		ch, err := conn.Connection().Channel()
		if err != nil {
			return err
		}
		defer ch.Close()
		return fn(ch)
	}
	return &Broker{
		Kind: AMQP,
		// On the default exchange a message is routed to the queue named
		// after the topic; RabbitMQ drops it (and still confirms it) while
		// that queue does not exist. watermill-amqp declares the queue
		// only when a subscriber subscribes, so the publisher declares it
		// too, once per topic, before the first publish.
		Publisher: &declaringPublisher{Publisher: pub, declare: func(topic string) error {
			return withChannel(func(ch *amqp091.Channel) error {
				_, err := ch.QueueDeclare(queue(topic), c.Queue.Durable, c.Queue.AutoDelete, c.Queue.Exclusive, false, c.Queue.Arguments)
				return err
			})
		}},
		Subscriber: sub,
		deleteTopic: func(_ context.Context, topic string) error {
			return withChannel(func(ch *amqp091.Channel) error {
				_, err := ch.QueueDelete(queue(topic), false, false, false)
				return err
			})
		},
		closers: []func() error{sub.Close, pub.Close, conn.Close},
	}, nil
}

// declaringPublisher declares a topic's queue before its first publish.
type declaringPublisher struct {
	message.Publisher
	declare  func(topic string) error
	mu       sync.Mutex
	declared map[string]bool
}

// Publish declares topic's queue once, then publishes.
func (p *declaringPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	if !p.declared[topic] {
		if err := p.declare(topic); err != nil {
			p.mu.Unlock()
			return fmt.Errorf("declare queue for topic %s: %w", topic, err)
		}
		if p.declared == nil {
			p.declared = map[string]bool{}
		}
		p.declared[topic] = true
	}
	p.mu.Unlock()
	return p.Publisher.Publish(topic, msgs...)
}

// ------------------------------------------------------------------ NATS

func openNATS(cfg Config, opts Options) (*Broker, error) {
	natsOpts := []nats.Option{nats.Name("txoutbox-example"), nats.Timeout(opts.ConnectTimeout)}
	pubConn, err := nats.Connect(cfg.URL, natsOpts...)
	if err != nil {
		return nil, err
	}
	js, err := pubConn.JetStream()
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), opts.ConnectTimeout)
		_, err = js.AccountInfo(nats.Context(ctx))
		cancel()
	}
	if err != nil {
		pubConn.Close()
		return nil, fmt.Errorf("JetStream is not available (start nats-server with -js): %w", err)
	}
	subConn, err := nats.Connect(cfg.URL, natsOpts...)
	if err != nil {
		pubConn.Close()
		return nil, err
	}
	jsCfg := wnats.JetStreamConfig{
		// One stream per topic, created on first use.
		AutoProvision: true,
		// The message UUID is the Nats-Msg-Id: JetStream drops a message
		// the forwarder publishes again within the stream's duplicate
		// window (2 minutes by default).
		TrackMsgId:       true,
		SubscribeOptions: []nats.SubOpt{nats.DeliverAll(), nats.AckExplicit()},
		DurablePrefix:    opts.ConsumerGroup,
		DurableCalculator: func(prefix, topic string) string {
			return prefix + "_" + topic
		},
	}
	marshaler := &wnats.NATSMarshaler{}
	pub, err := wnats.NewPublisherWithNatsConn(pubConn, wnats.PublisherPublishConfig{
		Marshaler:         marshaler,
		SubjectCalculator: wnats.DefaultSubjectCalculator,
		JetStream:         jsCfg,
	}, opts.Logger)
	if err != nil {
		pubConn.Close()
		subConn.Close()
		return nil, err
	}
	sub, err := wnats.NewSubscriberWithNatsConn(subConn, wnats.SubscriberSubscriptionConfig{
		Unmarshaler:       marshaler,
		SubjectCalculator: wnats.DefaultSubjectCalculator,
		AckWaitTimeout:    30 * time.Second,
		CloseTimeout:      10 * time.Second,
		SubscribeTimeout:  opts.ConnectTimeout,
		NakDelay:          wnats.NewStaticDelay(100 * time.Millisecond),
		JetStream:         jsCfg,
	}, opts.Logger)
	if err != nil {
		_ = pub.Close()
		subConn.Close()
		return nil, err
	}
	return &Broker{
		Kind:       NATS,
		Publisher:  pub,
		Subscriber: sub,
		deleteTopic: func(ctx context.Context, topic string) error {
			err := js.DeleteStream(topic, nats.Context(ctx))
			if errors.Is(err, nats.ErrStreamNotFound) {
				return nil
			}
			return err
		},
		closers: []func() error{sub.Close, pub.Close, func() error { subConn.Close(); return nil }},
	}, nil
}

// ----------------------------------------------------------------- Redis

func openRedis(ctx context.Context, cfg Config, opts Options) (*Broker, error) {
	newClient := func() *redis.Client {
		o := *cfg.Redis
		o.DialTimeout = opts.ConnectTimeout
		return redis.NewClient(&o)
	}
	pubClient := newClient()
	pingCtx, cancel := context.WithTimeout(ctx, opts.ConnectTimeout)
	err := pubClient.Ping(pingCtx).Err()
	cancel()
	if err != nil {
		_ = pubClient.Close()
		return nil, err
	}
	// The subscriber gets a client of its own: the publisher closes its
	// client when it closes.
	subClient := newClient()
	pub, err := redisstream.NewPublisher(redisstream.PublisherConfig{Client: pubClient}, opts.Logger)
	if err != nil {
		_ = pubClient.Close()
		_ = subClient.Close()
		return nil, err
	}
	sub, err := redisstream.NewSubscriber(redisstream.SubscriberConfig{
		Client:          subClient,
		ConsumerGroup:   opts.ConsumerGroup,
		NackResendSleep: 100 * time.Millisecond,
		// Without it the first XREADGROUP blocks forever on an empty
		// stream and Close cannot stop it.
		DisableIndefiniteInitialBlock: true,
	}, opts.Logger)
	if err != nil {
		_ = pub.Close()
		_ = subClient.Close()
		return nil, err
	}
	return &Broker{
		Kind:       Redis,
		Publisher:  pub,
		Subscriber: sub,
		deleteTopic: func(ctx context.Context, topic string) error {
			return pubClient.Del(ctx, topic).Err()
		},
		closers: []func() error{sub.Close, pub.Close, func() error {
			if err := subClient.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
				return err
			}
			return nil
		}},
	}, nil
}

// ----------------------------------------------------------------- Kafka

// kafkaMarshaler keys each Kafka message with the outbox partition key, so
// the events of one key land in one partition, in order.
var kafkaMarshaler = kafka.NewWithPartitioningMarshaler(func(_ string, msg *message.Message) (string, error) {
	return msg.Metadata.Get(outbox.MetadataPartitionKey), nil
})

func kafkaConfigs(timeout time.Duration) (pub, sub *sarama.Config) {
	pub = kafka.DefaultSaramaSyncPublisherConfig()
	// Confirmed means written to every in-sync replica.
	pub.Producer.RequiredAcks = sarama.WaitForAll
	sub = kafka.DefaultSaramaSubscriberConfig()
	sub.Consumer.Offsets.Initial = sarama.OffsetOldest
	for _, c := range []*sarama.Config{pub, sub} {
		c.ClientID = "txoutbox-example"
		c.Net.DialTimeout = timeout
		c.Metadata.Retry.Max = 1
		c.Metadata.Retry.Backoff = 250 * time.Millisecond
	}
	return pub, sub
}

func openKafka(cfg Config, opts Options) (*Broker, error) {
	pubCfg, subCfg := kafkaConfigs(opts.ConnectTimeout)
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers:               cfg.KafkaBrokers,
		Marshaler:             kafkaMarshaler,
		OverwriteSaramaConfig: pubCfg,
	}, opts.Logger)
	if err != nil {
		return nil, err
	}
	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{
		Brokers:               cfg.KafkaBrokers,
		Unmarshaler:           kafkaMarshaler,
		OverwriteSaramaConfig: subCfg,
		ConsumerGroup:         opts.ConsumerGroup,
	}, opts.Logger)
	if err != nil {
		_ = pub.Close()
		return nil, err
	}
	return &Broker{Kind: Kafka, Publisher: pub, Subscriber: sub, closers: []func() error{sub.Close, pub.Close}}, nil
}
