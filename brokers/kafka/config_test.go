package kafka_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/kafka"
)

// TestConfigValidate checks that Validate reports each problem, every
// one wrapping ErrInvalidConfig and saying how to fix it, and all of them
// at once; and that NewSubscriber also requires the consumer group,
// before connecting.
func TestConfigValidate(t *testing.T) {
	t.Parallel()
	ok := []string{"localhost:9092"}
	for _, tc := range []struct {
		name string
		cfg  kafka.Config
		want []string // substrings of the error, one per problem
	}{
		{"valid", kafka.Config{Brokers: ok}, nil},
		{"valid with every field", kafka.Config{
			Brokers: []string{"a:9092", "b:9092"}, ConsumerGroup: "g", ConnectTimeout: time.Second,
			ClientID: "me", Version: sarama.V1_0_0_0,
			Sarama: func(p kafka.SaramaParams) { p.Config.Producer.Compression = sarama.CompressionSnappy },
		}, nil},
		{"missing brokers", kafka.Config{}, []string{"Brokers is empty (set the bootstrap brokers"}},
		{"broker without port", kafka.Config{Brokers: []string{"localhost:9092", "localhost"}}, []string{`Brokers[1] "localhost" is not host:port`}},
		{"negative timeout", kafka.Config{Brokers: ok, ConnectTimeout: -time.Second}, []string{"ConnectTimeout -1s is negative (use 0 for the default"}},
		{"version too old", kafka.Config{Brokers: ok, Version: sarama.V0_10_2_0}, []string{"older than 0.11.0.0, which the idempotent producer needs"}},
		{"hook breaks idempotence", kafka.Config{Brokers: ok, Sarama: func(p kafka.SaramaParams) {
			p.Config.Net.MaxOpenRequests = 5
		}}, []string{"the Sarama config of the publisher is invalid (check Config.Sarama", "MaxOpenRequests"}},
		{"every problem at once", kafka.Config{Brokers: []string{"nohost"}, ConnectTimeout: -1, Version: sarama.V0_10_0_0},
			[]string{"Brokers[0]", "ConnectTimeout", "Version"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.cfg.Validate()
			if tc.want == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, kafka.ErrInvalidConfig)
			for _, w := range tc.want {
				require.ErrorContains(t, err, w)
			}
			if joined, ok := err.(interface{ Unwrap() []error }); ok && len(tc.want) > 1 && tc.name == "every problem at once" {
				require.Len(t, joined.Unwrap(), len(tc.want), "one error per problem")
				for _, e := range joined.Unwrap() {
					require.ErrorIs(t, e, kafka.ErrInvalidConfig)
				}
			}
			_, perr := kafka.NewPublisher(context.Background(), tc.cfg)
			require.ErrorIs(t, perr, kafka.ErrInvalidConfig, "NewPublisher validates")
		})
	}

	t.Run("subscriber needs a group", func(t *testing.T) {
		t.Parallel()
		// Nothing listens at port 1: the error must come before connecting.
		cfg := kafka.Config{Brokers: []string{"127.0.0.1:1"}}
		require.NoError(t, cfg.Validate(), "the publisher does not need a group")
		_, err := kafka.NewSubscriber(context.Background(), cfg)
		require.ErrorIs(t, err, kafka.ErrInvalidConfig)
		require.ErrorContains(t, err, "ConsumerGroup is empty (NewSubscriber needs the Kafka consumer group")
		var joined interface{ Unwrap() []error }
		require.True(t, errors.As(err, &joined))
		require.Len(t, joined.Unwrap(), 1, "only the group is wrong")
	})
}
