package kafka

import (
	"context"
	"fmt"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
)

// NewSubscriber returns watermill-kafka's subscriber in consumer group
// cfg.ConsumerGroup, decoding what Publisher sends (UUID, metadata,
// payload). A group that has no committed offset for a partition starts
// at the partition's oldest message, so it does not miss what was
// published before it first joined. Each Subscribe hands over a
// partition's next message only after the previous one was acked; a
// nacked message is delivered again (after 100ms) before the partition's
// later messages.
//
// NewSubscriber checks within cfg.ConnectTimeout that the cluster answers
// (a metadata fetch). The subscriber then reconnects by itself: after a
// lost connection it starts its consumer group session again, once a
// second until the cluster answers.
func NewSubscriber(ctx context.Context, cfg Config) (message.Subscriber, error) {
	if err := cfg.validate(true); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	probeConf, err := cfg.saramaConfig(true)
	if err != nil {
		return nil, err
	}
	client, err := within(ctx, cfg.ConnectTimeout, cfg.Brokers, func() (sarama.Client, error) {
		return sarama.NewClient(cfg.Brokers, probeConf)
	}, func(c sarama.Client) { _ = c.Close() })
	if err != nil {
		return nil, err
	}
	_ = client.Close()

	conf, err := cfg.saramaConfig(true)
	if err != nil {
		return nil, err
	}
	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{
		Brokers:               cfg.Brokers,
		Unmarshaler:           marshaler,
		OverwriteSaramaConfig: conf,
		ConsumerGroup:         cfg.ConsumerGroup,
	}, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("kafka: new subscriber: %w", err)
	}
	return sub, nil
}
