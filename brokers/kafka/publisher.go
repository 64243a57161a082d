package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/brokers/internal/unavail"
	"github.com/txoutbox/txoutbox/outbox"
)

// ErrClosed is returned by the methods of a Publisher after Close.
var ErrClosed = errors.New("kafka: publisher closed")

// reconnectWait is how long after a failed connect the publisher fails
// Publish at once with that error instead of connecting again: the
// forwarder retries a failed batch message by message, and each of those
// calls would otherwise wait for a connect that fails.
const reconnectWait = time.Second

// marshaler is watermill-kafka's marshaler with the outbox partition key
// as the Kafka record key, so that watermill-kafka's subscriber (and any
// consumer that reads headers) decodes what the publisher sends: the
// message UUID in the _watermill_message_uuid header, the metadata as the
// other headers, the payload as the value.
var marshaler = kafka.NewWithPartitioningMarshaler(func(_ string, msg *message.Message) (string, error) {
	return msg.Metadata.Get(outbox.MetadataPartitionKey), nil
})

// Publisher is a Watermill message.Publisher on a Sarama SyncProducer: the
// idempotent producer, acks from all in-sync replicas, a whole Publish
// sent before it waits. It is safe for concurrent use.
//
// After a failed Publish the publisher drops its Sarama producer and
// client and connects again on the next call (at most once per second
// while connecting fails), so it survives a cluster outage by itself, and
// Sarama's per-partition circuit breaker (open for 10s after 3 failures in
// a row) does not outlive the failure that opened it.
type Publisher struct {
	cfg Config
	log watermill.LoggerAdapter

	// connectMu serializes connecting, so that callers waiting for a
	// producer share one connect.
	connectMu sync.Mutex

	mu          sync.Mutex
	gen         *generation // nil until connected, and after a failure
	closed      bool
	inflight    sync.WaitGroup // calls between enter and their end
	lastFailure time.Time      // of the last connect
	lastErr     error          // of the last connect
}

// generation is one Sarama client and its producer; the publisher replaces
// it after a failure.
type generation struct {
	client   sarama.Client
	producer sarama.SyncProducer
	users    int  // calls using it; guarded by Publisher.mu
	broken   bool // replaced; closed by its last user
}

func (g *generation) close() error {
	return errors.Join(g.producer.Close(), g.client.Close())
}

// NewPublisher connects to the cluster (a metadata fetch and the
// idempotent producer's InitProducerID) within cfg.ConnectTimeout, or
// returns an error. After that the publisher reconnects by itself: Publish
// returns errors while the cluster is down and succeeds again once it is
// back.
func NewPublisher(ctx context.Context, cfg Config) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	p := &Publisher{cfg: cfg, log: cfg.Logger.With(watermill.LogFields{"provider": "kafka"})}
	g, err := p.connect(ctx)
	if err != nil {
		return nil, err
	}
	p.gen = g
	return p, nil
}

// connect builds a generation within ConnectTimeout.
func (p *Publisher) connect(ctx context.Context) (*generation, error) {
	return within(ctx, p.cfg.ConnectTimeout, p.cfg.Brokers, func() (*generation, error) {
		conf, err := p.cfg.saramaConfig(false)
		if err != nil {
			return nil, err
		}
		client, err := sarama.NewClient(p.cfg.Brokers, conf)
		if err != nil {
			return nil, err
		}
		producer, err := sarama.NewSyncProducerFromClient(client)
		if err != nil {
			_ = client.Close()
			return nil, fmt.Errorf("start the idempotent producer: %w", err)
		}
		return &generation{client: client, producer: producer}, nil
	}, func(g *generation) { _ = g.close() })
}

// within runs open, and returns its result if it comes within timeout and
// before ctx ends. Otherwise it returns an error and closes what open
// returns later.
func within[T any](ctx context.Context, timeout time.Duration, brokers []string, open func() (T, error), closeLate func(T)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := open()
		done <- result{v, err}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	abandon := func() {
		go func() {
			if r := <-done; r.err == nil {
				closeLate(r.v)
			}
		}()
	}
	var zero T
	select {
	case r := <-done:
		if r.err != nil {
			return zero, fmt.Errorf("kafka: connect to %v: %w", brokers, r.err)
		}
		return r.v, nil
	case <-timer.C:
		abandon()
		return zero, fmt.Errorf("kafka: connect to %v: no answer within %v (Config.ConnectTimeout)", brokers, timeout)
	case <-ctx.Done():
		abandon()
		return zero, fmt.Errorf("kafka: connect to %v: %w", brokers, ctx.Err())
	}
}

// enter counts a call in flight, or fails after Close.
func (p *Publisher) enter() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	p.inflight.Add(1)
	return nil
}

// acquire returns the current generation, connecting when there is none.
// The caller has entered and must release the generation.
func (p *Publisher) acquire() (*generation, error) {
	p.connectMu.Lock()
	defer p.connectMu.Unlock()
	p.mu.Lock()
	if g := p.gen; g != nil {
		g.users++
		p.mu.Unlock()
		return g, nil
	}
	if since := time.Since(p.lastFailure); p.lastErr != nil && since < reconnectWait {
		err := p.lastErr
		p.mu.Unlock()
		return nil, fmt.Errorf("%w (connect failed %v ago; next try in %v)", err, since.Round(time.Millisecond), (reconnectWait - since).Round(time.Millisecond))
	}
	p.mu.Unlock()

	g, err := p.connect(context.Background())
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.lastFailure, p.lastErr = time.Now(), err
		return nil, err
	}
	p.lastErr = nil
	p.log.Info("Kafka publisher connected again", nil)
	p.gen = g
	g.users++
	return g, nil
}

// release ends a use of g. failed drops g: the next call connects again,
// and g is closed by its last user.
func (p *Publisher) release(g *generation, failed bool) {
	p.mu.Lock()
	g.users--
	if failed && !g.broken {
		g.broken = true
		if p.gen == g {
			p.gen = nil
		}
	}
	closeNow := g.broken && g.users == 0
	p.mu.Unlock()
	if closeNow {
		if err := g.close(); err != nil {
			p.log.Debug("Closing the replaced Kafka producer failed", watermill.LogFields{"err": err.Error()})
		}
	}
}

// Publish sends msgs to topic and returns nil only once the cluster
// acknowledged every one of them, from all in-sync replicas. It sends the
// whole batch before waiting (Sarama batches it per partition), and keeps
// the order of msgs per partition key: a message's outbox partition key
// (metadata outbox.MetadataPartitionKey) is its Kafka record key, so a
// key's messages go to one partition. A message without a key gets a nil
// record key, which Sarama's hash partitioner sends to a random partition.
//
// An error means that some messages may not have been written; others of
// the same call may have been, and are written again when the caller
// publishes them again. A Publish while the cluster is unreachable fails
// within about ConnectTimeout, mostly at once.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if topic == "" {
		return errors.New("kafka: publish: empty topic")
	}
	if len(msgs) == 0 {
		return nil
	}
	pms := make([]*sarama.ProducerMessage, len(msgs))
	for i, m := range msgs {
		pm, err := marshaler.Marshal(topic, m)
		if err != nil {
			return fmt.Errorf("kafka: publish message %s to %s: %w", m.UUID, topic, err)
		}
		if pm.Key != nil && pm.Key.Length() == 0 {
			pm.Key = nil // unkeyed: spread over the partitions
		}
		pm.Metadata = m.UUID
		pms[i] = pm
	}
	if err := p.enter(); err != nil {
		return err
	}
	defer p.inflight.Done()
	g, err := p.acquire()
	if err != nil {
		// Connecting failed: the cluster cannot be reached.
		return fmt.Errorf("kafka: publish %d messages to %s: %w", len(msgs), topic, unavail.Mark(err))
	}
	err = g.producer.SendMessages(pms)
	p.release(g, err != nil)
	if err != nil {
		return publishError(topic, len(msgs), err)
	}
	return nil
}

// publishError describes a failed SendMessages: how many messages were not
// acknowledged, and the first of their errors (wrapped, for errors.Is with
// Sarama's errors).
func publishError(topic string, n int, err error) error {
	var perrs sarama.ProducerErrors
	if !errors.As(err, &perrs) || len(perrs) == 0 {
		return fmt.Errorf("kafka: publish %d messages to %s: %w", n, topic, unreachable(err))
	}
	first := perrs[0]
	uuid, _ := first.Msg.Metadata.(string)
	return fmt.Errorf("kafka: publish to %s: %d of %d messages not acknowledged; first: message %s: %w", topic, len(perrs), n, uuid, unreachable(first.Err))
}

// unreachable marks the errors that say no broker of the cluster can be
// reached.
func unreachable(err error) error {
	if errors.Is(err, sarama.ErrOutOfBrokers) || errors.Is(err, sarama.ErrNotConnected) || errors.Is(err, sarama.ErrClosedClient) {
		return unavail.Mark(err)
	}
	return unavail.IfNetwork(err)
}

// Ping returns nil while the cluster is reachable: a broker answers an
// ApiVersions request. It connects first when the publisher has no
// connection (after a failure), so a nil Ping also means that the next
// Publish has a producer. For health checks.
func (p *Publisher) Ping(ctx context.Context) error {
	return p.withGeneration(ctx, func(g *generation) error {
		var err error
		// A connection the cluster closed (a broker restart) fails once;
		// closing it makes the second try dial again.
		for range 2 {
			b := g.client.LeastLoadedBroker()
			if b == nil {
				return errors.New("kafka: ping: no broker known")
			}
			if _, err = b.ApiVersions(&sarama.ApiVersionsRequest{}); err == nil {
				return nil
			}
			_ = b.Close()
		}
		return fmt.Errorf("kafka: ping: %w", err)
	})
}

// DeleteTopic deletes topic, for tests' cleanup. It returns nil when the
// topic does not exist.
func (p *Publisher) DeleteTopic(ctx context.Context, topic string) error {
	return p.withGeneration(ctx, func(g *generation) error {
		admin, err := sarama.NewClusterAdminFromClient(g.client)
		if err != nil {
			return fmt.Errorf("kafka: delete topic %s: %w", topic, err)
		}
		// Not closed: closing a ClusterAdmin closes the client it was made
		// from.
		err = admin.DeleteTopic(topic)
		if err != nil && !errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
			return fmt.Errorf("kafka: delete topic %s: %w", topic, err)
		}
		return nil
	})
}

// withGeneration runs fn with the current generation, connecting first if
// needed, and returns its error or, when ctx ends first, ctx's.
func (p *Publisher) withGeneration(ctx context.Context, fn func(*generation) error) error {
	if err := p.enter(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		defer p.inflight.Done()
		g, err := p.acquire()
		if err == nil {
			err = fn(g)
			p.release(g, false)
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close waits for the calls in flight, then closes the producer and its
// connections. Later calls return ErrClosed; Close itself is safe to call
// more than once.
func (p *Publisher) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.inflight.Wait()
	p.mu.Lock()
	g := p.gen
	p.gen = nil
	p.mu.Unlock()
	if g == nil {
		return nil
	}
	if err := g.close(); err != nil {
		return fmt.Errorf("kafka: close publisher: %w", err)
	}
	return nil
}

// The Publisher is a Watermill publisher.
var _ message.Publisher = (*Publisher)(nil)
