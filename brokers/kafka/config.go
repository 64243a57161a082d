package kafka

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
)

// DefaultConnectTimeout is the default Config.ConnectTimeout.
const DefaultConnectTimeout = 5 * time.Second

// DefaultClientID is the default Config.ClientID.
const DefaultClientID = "txoutbox"

// ErrInvalidConfig wraps every problem Config.Validate reports.
var ErrInvalidConfig = errors.New("kafka: invalid config")

// Config configures NewPublisher and NewSubscriber. Only Brokers is
// required (and ConsumerGroup for NewSubscriber); every other field has a
// default.
type Config struct {
	// Brokers are the bootstrap brokers, as host:port. Required.
	Brokers []string
	// ConsumerGroup is the Kafka consumer group of NewSubscriber. Required
	// by NewSubscriber; NewPublisher ignores it.
	ConsumerGroup string
	// ConnectTimeout bounds connecting: NewPublisher, NewSubscriber, and
	// every reconnect of the publisher after a failed Publish. It is also
	// Sarama's Net.DialTimeout. Optional; default DefaultConnectTimeout
	// (5s).
	ConnectTimeout time.Duration
	// Logger receives the publisher's and the subscriber's logs. Optional;
	// default watermill.NopLogger{}.
	Logger watermill.LoggerAdapter
	// ClientID is the Kafka client ID the brokers see. Optional; default
	// DefaultClientID ("txoutbox").
	ClientID string
	// Version is the Kafka protocol version Sarama speaks. Optional;
	// default sarama.V2_3_0_0: the highest version with which
	// watermill-kafka v3.0.6's consumer group works against kfake (from
	// V2_4_0_0 the consumer group fails with "error decoding packet:
	// invalid byteslice length" and reconnects in a tight loop), and
	// above V0_11_0_0, which the idempotent producer needs. Must be at
	// least sarama.V0_11_0_0.
	Version sarama.KafkaVersion
	// Sarama, when not nil, adjusts the Sarama configuration built from
	// the fields above (TLS, SASL, compression, timeouts, retries) before
	// it is validated and used. It is called once for every Sarama config
	// built: by Validate, by NewPublisher and each reconnect of the
	// publisher, and by NewSubscriber. Turning off Producer.Idempotent or
	// RequiredAcks = WaitForAll weakens what a nil Publish means (see the
	// package documentation). Optional.
	Sarama func(SaramaParams)
}

// SaramaParams are the arguments of Config.Sarama.
type SaramaParams struct {
	// Config is the Sarama configuration to adjust in place.
	Config *sarama.Config
	// Subscriber is true for the configuration of NewSubscriber, false for
	// that of NewPublisher.
	Subscriber bool
}

// Validate reports every problem with the fields both NewPublisher and
// NewSubscriber use, each wrapping ErrInvalidConfig, joined with
// errors.Join. NewSubscriber also requires ConsumerGroup.
func (c Config) Validate() error {
	return c.validate(false)
}

// validate is Validate, which also requires ConsumerGroup when
// needGroup is true.
func (c Config) validate(needGroup bool) error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if len(c.Brokers) == 0 {
		add(`Brokers is empty (set the bootstrap brokers, e.g. []string{"localhost:9092"})`)
	}
	for i, b := range c.Brokers {
		if _, _, err := net.SplitHostPort(b); err != nil {
			add("Brokers[%d] %q is not host:port (e.g. \"localhost:9092\"): %v", i, b, err)
		}
	}
	if needGroup && c.ConsumerGroup == "" {
		add("ConsumerGroup is empty (NewSubscriber needs the Kafka consumer group, e.g. \"orders-read-model\")")
	}
	if c.ConnectTimeout < 0 {
		add("ConnectTimeout %v is negative (use 0 for the default, %v)", c.ConnectTimeout, DefaultConnectTimeout)
	}
	if c.Version != (sarama.KafkaVersion{}) && !c.Version.IsAtLeast(sarama.V0_11_0_0) {
		add("Version %v is older than 0.11.0.0, which the idempotent producer needs (leave it empty for the default, %v)", c.Version, sarama.V2_3_0_0)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// The fields are fine: check what Sarama makes of them, with the
	// Sarama hook applied, for the publisher and the subscriber.
	for _, sub := range []bool{false, true} {
		if _, err := c.withDefaults().saramaConfig(sub); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// withDefaults returns c with every optional field set.
func (c Config) withDefaults() Config {
	c.ConnectTimeout = cmp.Or(c.ConnectTimeout, DefaultConnectTimeout)
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	c.ClientID = cmp.Or(c.ClientID, DefaultClientID)
	if c.Version == (sarama.KafkaVersion{}) {
		c.Version = sarama.V2_3_0_0
	}
	return c
}

// Producer retry settings: see producerBackoff.
const (
	producerRetryMax     = 6
	producerRetryBackoff = 20 * time.Millisecond
	producerMaxBackoff   = time.Second
)

// producerBackoff is Sarama's wait before retrying a message for the
// retries-th time: 20ms doubled per retry (20ms to 640ms, 1.26s over the
// six retries). Sarama also waits it once per message whose partition has
// no reachable leader, before failing that message; for a message on its
// first try (retries 0) it is 0, so that a Publish while the cluster is
// away fails at once instead of sleeping once per message.
func producerBackoff(retries, _ int) time.Duration {
	if retries <= 0 {
		return 0
	}
	d := producerRetryBackoff << (retries - 1)
	if d <= 0 || d > producerMaxBackoff {
		return producerMaxBackoff
	}
	return d
}

// saramaConfig builds the Sarama config of the publisher or the
// subscriber from c (with defaults applied), runs the Sarama hook and
// validates the result.
func (c Config) saramaConfig(subscriber bool) (*sarama.Config, error) {
	s := sarama.NewConfig()
	s.ClientID = c.ClientID
	s.Version = c.Version
	s.Net.DialTimeout = c.ConnectTimeout
	role := "publisher"
	if subscriber {
		role = "subscriber"
		// A new group starts at the beginning of the topic, not at its
		// end (Sarama's default), so it does not miss what was published
		// before it first joined.
		s.Consumer.Offsets.Initial = sarama.OffsetOldest
		s.Consumer.Return.Errors = true
	} else {
		// Confirmed means written to every in-sync replica.
		s.Producer.RequiredAcks = sarama.WaitForAll
		// The idempotent producer: the broker drops a message Sarama sends
		// again after a lost response, and with one request in flight per
		// broker a retry cannot overtake a later message of its partition.
		s.Producer.Idempotent = true
		s.Net.MaxOpenRequests = 1
		s.Producer.Return.Successes = true // SyncProducer needs both
		s.Producer.Return.Errors = true
		s.Producer.Retry.Max = producerRetryMax
		s.Producer.Retry.BackoffFunc = producerBackoff
		// InitProducerID, at connect: Sarama's default retries it 50
		// times; a connect has ConnectTimeout anyway.
		s.Producer.Transaction.Retry.Max = 2
	}
	if c.Sarama != nil {
		c.Sarama(SaramaParams{Config: s, Subscriber: subscriber})
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%w: the Sarama config of the %s is invalid (check Config.Sarama and Config.Version): %w", ErrInvalidConfig, role, err)
	}
	return s, nil
}
