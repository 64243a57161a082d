package natsjs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/txoutbox/txoutbox/brokers/internal/unavail"
)

// Defaults of Config.
const (
	DefaultConnectTimeout  = 5 * time.Second
	DefaultPublishTimeout  = 10 * time.Second
	DefaultMaxPending      = 4000
	DefaultDuplicateWindow = 2 * time.Minute
	DefaultReplicas        = 1
	DefaultAckWait         = 30 * time.Second
	DefaultNakDelay        = 100 * time.Millisecond
)

// maxReplicas is the most replicas JetStream allows for a stream.
const maxReplicas = 5

var (
	// ErrInvalidConfig wraps every problem Config.Validate reports.
	ErrInvalidConfig = errors.New("natsjs: invalid config")
	// ErrNoJetStream is returned by NewPublisher and NewSubscriber when the
	// server answers but has JetStream off (start nats-server with -js).
	ErrNoJetStream = errors.New("natsjs: JetStream is not enabled on the server (start nats-server with -js, or enable JetStream for the account)")
	// ErrNoStream is returned by Publish when no stream stores the topic's
	// subject: with auto-provisioning off (Config.DisableAutoProvision),
	// the operator has to create it first.
	ErrNoStream = errors.New("natsjs: no JetStream stream stores the topic")
	// ErrClosed is returned by Publish, Ping and DeleteTopic after Close.
	ErrClosed = errors.New("natsjs: publisher closed")
)

// Config configures a Publisher and a subscriber.
type Config struct {
	// URL is the server, nats://host:4222 (tls://, ws:// and wss:// too),
	// or a comma-separated list of servers of one cluster. User and
	// password or a token may be in the URL. Required.
	URL string
	// ConsumerGroup names the subscriber's durable consumers: one per
	// topic, named ConsumerGroup + "_" + topic. Required by NewSubscriber,
	// ignored by NewPublisher. Only letters, digits, '-' and '_'.
	ConsumerGroup string
	// ConnectTimeout bounds NewPublisher and NewSubscriber: connecting and
	// checking that the server has JetStream. Optional; default
	// DefaultConnectTimeout (5s).
	ConnectTimeout time.Duration
	// Logger receives the clients' logs. Optional; default
	// watermill.NopLogger.
	Logger watermill.LoggerAdapter

	// PublishTimeout bounds one Publish call: provisioning the stream,
	// sending the messages and waiting for every acknowledgement. Optional;
	// default DefaultPublishTimeout (10s).
	PublishTimeout time.Duration
	// MaxPending is the most messages a Publisher has sent and not yet seen
	// acknowledged, over all concurrent Publish calls. A Publish that would
	// exceed it waits for acknowledgements (within PublishTimeout). It must
	// be at least the largest batch (the forwarder's BatchSize, 2,000 by
	// default) for a batch to go out in one piece. Optional; default
	// DefaultMaxPending (4000, the nats.go default).
	MaxPending int
	// DisableAutoProvision turns off creating streams. By default
	// (false) Publish and Subscribe create a topic's stream when it does
	// not exist: named after the topic, subject the topic, file storage,
	// Replicas and DuplicateWindow below, no limits. The topic must then be
	// a valid stream name (letters, digits, '-' and '_' are safe; no '.',
	// '*', '>' or spaces). With true the operator creates the streams, with
	// any name and limits, as long as one stores the subject named after
	// the topic; Publish to a topic without a stream fails with
	// ErrNoStream (never a silent drop). Optional.
	DisableAutoProvision bool
	// Replicas is the replica count of a stream auto-provisioning creates
	// (1 to 5; 3 on a cluster to survive the loss of a server). Optional;
	// default DefaultReplicas (1).
	Replicas int
	// DuplicateWindow is how long an auto-provisioned stream remembers
	// message IDs to drop a republished message (the Nats-Msg-Id is the
	// message UUID). Optional; default DefaultDuplicateWindow (2m, the
	// JetStream default).
	DuplicateWindow time.Duration
	// AckWait is how long the subscriber's consumer waits for a message's
	// ack before JetStream delivers it again. Optional; default
	// DefaultAckWait (30s).
	AckWait time.Duration
	// NakDelay is how long JetStream waits before delivering a nacked
	// message again. Optional; default DefaultNakDelay (100ms).
	NakDelay time.Duration
	// AckSync makes the subscriber wait for the server to confirm each
	// ack before it takes the next message. Optional; default false: an
	// ack is sent without waiting, since waiting costs a round trip per
	// message, and a lost ack only makes JetStream deliver the message
	// again after AckWait.
	AckSync bool
	// NatsOptions are extra nats.go options for both connections, for
	// credentials (nats.UserCredentials) or TLS. Optional. The package
	// applies its own after them: nats.Timeout(ConnectTimeout),
	// nats.MaxReconnects(-1) (reconnect forever) and, for the publisher,
	// nats.ReconnectBufSize(-1) (see the package documentation).
	NatsOptions []nats.Option
}

// Validate reports every problem with the config.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if strings.TrimSpace(c.URL) == "" {
		add("URL is required (for example nats://127.0.0.1:4222)")
	} else {
		for _, s := range strings.Split(c.URL, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				add("URL %q has an empty server in its list", c.URL)
				continue
			}
			if !strings.Contains(s, "://") {
				continue // nats.go reads host:port as nats://host:port
			}
			u, err := url.Parse(s)
			if err != nil {
				add("URL %q: %v", redact(s), err)
				continue
			}
			switch u.Scheme {
			case "nats", "tls", "ws", "wss":
			default:
				add("URL %q: scheme %q is not nats, tls, ws or wss", redact(s), u.Scheme)
			}
		}
	}
	if c.ConsumerGroup != "" {
		if err := validName(c.ConsumerGroup); err != nil {
			add("ConsumerGroup %q: %v", c.ConsumerGroup, err)
		}
	}
	neg := func(name string, v int64) {
		if v < 0 {
			add("%s is negative (use 0 for the default)", name)
		}
	}
	neg("ConnectTimeout", int64(c.ConnectTimeout))
	neg("PublishTimeout", int64(c.PublishTimeout))
	neg("MaxPending", int64(c.MaxPending))
	neg("Replicas", int64(c.Replicas))
	neg("DuplicateWindow", int64(c.DuplicateWindow))
	neg("AckWait", int64(c.AckWait))
	neg("NakDelay", int64(c.NakDelay))
	if c.Replicas > maxReplicas {
		add("Replicas is %d; JetStream allows 1 to %d", c.Replicas, maxReplicas)
	}
	return errors.Join(errs...)
}

// validName accepts what is safe as a stream or consumer name.
func validName(s string) error {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return errors.New("only letters, digits, '-' and '_' are allowed")
		}
	}
	return nil
}

// redact hides a password in a URL for error messages.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	return u.Redacted()
}

func (c Config) withDefaults() Config {
	c.ConnectTimeout = cmp.Or(c.ConnectTimeout, DefaultConnectTimeout)
	c.PublishTimeout = cmp.Or(c.PublishTimeout, DefaultPublishTimeout)
	c.MaxPending = cmp.Or(c.MaxPending, DefaultMaxPending)
	c.Replicas = cmp.Or(c.Replicas, DefaultReplicas)
	c.DuplicateWindow = cmp.Or(c.DuplicateWindow, DefaultDuplicateWindow)
	c.AckWait = cmp.Or(c.AckWait, DefaultAckWait)
	c.NakDelay = cmp.Or(c.NakDelay, DefaultNakDelay)
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	return c
}

// streamConfig is the stream auto-provisioning creates for topic.
func (c Config) streamConfig(topic string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:       topic,
		Subjects:   []string{topic},
		Storage:    jetstream.FileStorage,
		Retention:  jetstream.LimitsPolicy,
		Replicas:   c.Replicas,
		Duplicates: c.DuplicateWindow,
	}
}

// connect dials the server and checks that it has JetStream, all within
// ConnectTimeout (and ctx). A connection that arrives after the deadline
// is closed.
func (c Config) connect(ctx context.Context, name string, extra ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	ctx, cancel := context.WithTimeout(ctx, c.ConnectTimeout)
	defer cancel()
	opts := append([]nats.Option{}, c.NatsOptions...)
	opts = append(opts,
		nats.Name(name),
		nats.Timeout(c.ConnectTimeout),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(false),
	)
	opts = append(opts, extra...)
	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(c.URL, opts...)
		done <- result{nc, err}
	}()
	var nc *nats.Conn
	select {
	case r := <-done:
		if r.err != nil {
			return nil, nil, fmt.Errorf("natsjs: connect to %s: %w", redact(c.URL), r.err)
		}
		nc = r.nc
	case <-ctx.Done():
		go func() {
			if r := <-done; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, nil, fmt.Errorf("natsjs: connect to %s: no answer within %v: %w", redact(c.URL), c.ConnectTimeout, ctx.Err())
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(c.MaxPending))
	if err == nil {
		_, err = js.AccountInfo(ctx)
	}
	if err != nil {
		nc.Close()
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return nil, nil, fmt.Errorf("%w: %s: %w", ErrNoJetStream, redact(c.URL), err)
		}
		return nil, nil, fmt.Errorf("natsjs: check JetStream at %s: %w", redact(c.URL), err)
	}
	return nc, js, nil
}

// Publisher publishes to NATS JetStream: a Publish call sends all its
// messages before it waits for their acknowledgements. It is safe for
// concurrent use. Create it with NewPublisher.
type Publisher struct {
	cfg       Config
	nc        *nats.Conn
	js        jetstream.JetStream
	marshaler wnats.NATSMarshaler

	closing   chan struct{}
	closeOnce sync.Once

	mu          sync.Mutex
	provisioned map[string]bool // topics whose stream is known to exist
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher connects to the server and checks that it has JetStream
// (ErrNoJetStream if not). It fails when the config is invalid or the
// server does not answer within Config.ConnectTimeout. After that the
// connection reconnects by itself, forever: Publish fails while the server
// is away and succeeds again once it is back.
func NewPublisher(ctx context.Context, cfg Config) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	// ReconnectBufSize(-1): while reconnecting, a publish fails at once
	// instead of waiting in a buffer that is sent after the reconnect,
	// possibly behind messages of a later batch.
	nc, js, err := cfg.connect(ctx, "txoutbox-natsjs-publisher", nats.ReconnectBufSize(-1))
	if err != nil {
		return nil, err
	}
	return &Publisher{
		cfg:         cfg,
		nc:          nc,
		js:          js,
		closing:     make(chan struct{}),
		provisioned: map[string]bool{},
	}, nil
}

// Publish sends msgs to the subject topic, in order, and returns nil once
// JetStream acknowledged every one of them: each is stored in the stream,
// or was already stored (a duplicate of its UUID within the duplicate
// window, dropped by JetStream). All msgs are sent before the first
// acknowledgement is awaited. On an error some of msgs may be stored;
// publishing them again is safe (JetStream drops the duplicates).
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if p.isClosed() {
		return ErrClosed
	}
	if len(msgs) == 0 {
		return nil
	}
	if topic == "" {
		return errors.New("natsjs: publish: empty topic")
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.PublishTimeout)
	defer cancel()
	if err := p.ensureStream(ctx, topic); err != nil {
		return fmt.Errorf("natsjs: publish to %s: %w", topic, err)
	}
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for i, msg := range msgs {
		nm, err := p.marshal(topic, msg)
		if err != nil {
			return fmt.Errorf("natsjs: publish to %s: message %d of %d (%s): %w", topic, i+1, len(msgs), msg.UUID, err)
		}
		stall := time.Until(deadline(ctx))
		if stall <= 0 {
			return fmt.Errorf("natsjs: publish to %s: %d of %d messages sent within %v", topic, i, len(msgs), p.cfg.PublishTimeout)
		}
		// No retries inside nats.go: its retry of a "no responders" answer
		// races with PublishMsgAsync in v1.37.0 (-race reports it), and a
		// failed message fails the call, which the forwarder retries.
		f, err := p.js.PublishMsgAsync(nm, jetstream.WithMsgID(msg.UUID), jetstream.WithStallWait(stall), jetstream.WithRetryAttempts(0))
		if err != nil {
			switch {
			case p.isClosed():
				err = ErrClosed
			case errors.Is(err, nats.ErrReconnectBufExceeded):
				err = unavail.Mark(fmt.Errorf("not connected, reconnecting to %s: %w", redact(p.cfg.URL), err))
			case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrNoServers):
				err = unavail.Mark(err)
			}
			return fmt.Errorf("natsjs: publish to %s: send message %d of %d (%s): %w", topic, i+1, len(msgs), msg.UUID, err)
		}
		futures = append(futures, f)
	}
	var (
		failed   int
		firstErr error
	)
	for i, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			if failed == 0 {
				firstErr = fmt.Errorf("message %d (%s): %w", i+1, msgs[i].UUID, p.explain(topic, err))
			}
			failed++
		case <-ctx.Done():
			return fmt.Errorf("natsjs: publish to %s: %d of %d messages not acknowledged within %v", topic, len(futures)-i, len(msgs), p.cfg.PublishTimeout)
		case <-p.closing:
			return fmt.Errorf("natsjs: publish to %s: %w before every message was acknowledged", topic, ErrClosed)
		}
	}
	if failed > 0 {
		return fmt.Errorf("natsjs: publish to %s: %d of %d messages failed, first %w", topic, failed, len(msgs), firstErr)
	}
	return nil
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// marshal maps msg with watermill-nats's NATSMarshaler, the mapping the
// watermill-nats subscriber reads: payload as data, UUID in the header
// _watermill_message_uuid, each metadata entry a header.
func (p *Publisher) marshal(topic string, msg *message.Message) (*nats.Msg, error) {
	for k := range msg.Metadata {
		if k == wnats.WatermillUUIDHdr || strings.HasPrefix(k, "Nats-") {
			return nil, fmt.Errorf("metadata key %q is reserved (NATS and JetStream headers, and %s for the UUID)", k, wnats.WatermillUUIDHdr)
		}
	}
	return p.marshaler.Marshal(topic, msg)
}

// explain turns an acknowledgement error into one that says what to do.
func (p *Publisher) explain(topic string, err error) error {
	if !errors.Is(err, jetstream.ErrNoStreamResponse) {
		return err
	}
	p.mu.Lock()
	delete(p.provisioned, topic) // deleted behind our back: provision again
	p.mu.Unlock()
	if p.cfg.DisableAutoProvision {
		return fmt.Errorf("%w: no stream stores subject %q (create one, or leave auto-provisioning on): %w", ErrNoStream, topic, err)
	}
	return fmt.Errorf("%w: no stream stores subject %q (deleted while publishing? the next Publish creates it again): %w", ErrNoStream, topic, err)
}

// ensureStream creates topic's stream if auto-provisioning is on and it
// does not exist yet. It asks the server once per topic.
func (p *Publisher) ensureStream(ctx context.Context, topic string) error {
	if p.cfg.DisableAutoProvision {
		return nil
	}
	p.mu.Lock()
	ok := p.provisioned[topic]
	p.mu.Unlock()
	if ok {
		return nil
	}
	if err := ensureStream(ctx, p.js, p.cfg, topic); err != nil {
		return err
	}
	p.mu.Lock()
	p.provisioned[topic] = true
	p.mu.Unlock()
	return nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, cfg Config, topic string) error {
	_, err := js.Stream(ctx, topic)
	if err == nil {
		return nil
	}
	if errors.Is(err, jetstream.ErrInvalidStreamName) {
		return fmt.Errorf("topic %q is not a valid stream name: auto-provisioning names the stream after the topic (use letters, digits, '-' and '_', or create the streams and set DisableAutoProvision): %w", topic, err)
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("look up stream %s: %w", topic, err)
	}
	_, err = js.CreateStream(ctx, cfg.streamConfig(topic))
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("create stream %s (auto-provisioning; topics must be valid stream names): %w", topic, err)
	}
	return nil
}

// Ping returns nil while the publisher is connected to the server. It
// reads the connection's state and sends nothing.
func (p *Publisher) Ping(ctx context.Context) error {
	if p.isClosed() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if st := p.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("natsjs: not connected to %s (%v)", redact(p.cfg.URL), st)
	}
	return nil
}

// DeleteTopic deletes the stream named after topic, with its consumers and
// messages. It returns nil when there is no such stream. With
// auto-provisioning off, a stream of another name that stores the topic is
// left alone.
func (p *Publisher) DeleteTopic(ctx context.Context, topic string) error {
	if p.isClosed() {
		return ErrClosed
	}
	p.mu.Lock()
	delete(p.provisioned, topic)
	p.mu.Unlock()
	err := p.js.DeleteStream(ctx, topic)
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("natsjs: delete stream %s: %w", topic, err)
	}
	return nil
}

// Close closes the connection. A Publish waiting for acknowledgements
// returns ErrClosed; one after Close too. Close is safe to call more than
// once.
func (p *Publisher) Close() error {
	p.closeOnce.Do(func() {
		close(p.closing)
		p.nc.Close()
	})
	return nil
}

func (p *Publisher) isClosed() bool {
	select {
	case <-p.closing:
		return true
	default:
		return false
	}
}

// NewSubscriber connects a connection of its own and returns the
// watermill-nats JetStream subscriber on it, configured to read what the
// Publisher sends: subject = topic, a durable consumer per topic named
// ConsumerGroup + "_" + topic that starts at the beginning of the stream
// (DeliverAll) the first time and wants every message acked
// (AckExplicit). Unless auto-provisioning is off, Subscribe creates the
// topic's stream first, as Publish does. The subscriber closes (drains)
// its connection when it closes.
func NewSubscriber(ctx context.Context, cfg Config) (message.Subscriber, error) {
	err := cfg.Validate()
	if cfg.ConsumerGroup == "" {
		err = errors.Join(err, fmt.Errorf("%w: ConsumerGroup is required by NewSubscriber (it names the durable consumers)", ErrInvalidConfig))
	}
	if err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	nc, js, err := cfg.connect(ctx, "txoutbox-natsjs-subscriber")
	if err != nil {
		return nil, err
	}
	jsCfg := wnats.JetStreamConfig{
		// Streams are provisioned by subscriber.Subscribe, with the same
		// stream config as the publisher's.
		AutoProvision:    false,
		SubscribeOptions: []nats.SubOpt{nats.DeliverAll(), nats.AckExplicit(), nats.AckWait(cfg.AckWait)},
		DurablePrefix:    cfg.ConsumerGroup,
		DurableCalculator: func(prefix, topic string) string {
			return prefix + "_" + topic
		},
		// An ack is sent without waiting for the server's reply: waiting
		// costs a round trip per message and caps a consumer at a few
		// thousand messages a second. A lost ack is a redelivery.
		AckAsync: !cfg.AckSync,
	}
	sub, err := wnats.NewSubscriberWithNatsConn(nc, wnats.SubscriberSubscriptionConfig{
		Unmarshaler:       &wnats.NATSMarshaler{},
		SubjectCalculator: wnats.DefaultSubjectCalculator,
		AckWaitTimeout:    cfg.AckWait,
		CloseTimeout:      cfg.ConnectTimeout,
		SubscribeTimeout:  cfg.ConnectTimeout,
		NakDelay:          wnats.NewStaticDelay(cfg.NakDelay),
		JetStream:         jsCfg,
	}, cfg.Logger)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("natsjs: new subscriber: %w", err)
	}
	return &subscriber{sub: sub, js: js, cfg: cfg}, nil
}

// subscriber provisions a topic's stream before subscribing.
type subscriber struct {
	sub *wnats.Subscriber
	js  jetstream.JetStream
	cfg Config
}

var (
	_ message.Subscriber           = (*subscriber)(nil)
	_ message.SubscribeInitializer = (*subscriber)(nil)
)

// Subscribe creates topic's stream unless auto-provisioning is off, then
// subscribes.
func (s *subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if err := s.provision(ctx, topic); err != nil {
		return nil, err
	}
	return s.sub.Subscribe(ctx, topic)
}

// SubscribeInitialize creates topic's stream unless auto-provisioning is
// off.
func (s *subscriber) SubscribeInitialize(topic string) error {
	return s.provision(context.Background(), topic)
}

func (s *subscriber) provision(ctx context.Context, topic string) error {
	if s.cfg.DisableAutoProvision {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	defer cancel()
	if err := ensureStream(ctx, s.js, s.cfg, topic); err != nil {
		return fmt.Errorf("natsjs: subscribe to %s: %w", topic, err)
	}
	return nil
}

// Close closes the subscriptions, waits for the messages in flight (at
// most ConnectTimeout) and drains the connection.
func (s *subscriber) Close() error {
	return s.sub.Close()
}
