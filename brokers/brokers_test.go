package brokers_test

import (
	"cmp"
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/txoutbox/txoutbox/brokers"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
	"github.com/txoutbox/txoutbox/internal/lateproxy"
	"github.com/txoutbox/txoutbox/outbox"
)

// The brokers of this machine; `make test` starts them
// (scripts/ensure-services.sh rabbitmq nats redis). Kafka runs in process
// on kfake.
func testURL(t *testing.T, kind brokers.Kind) string {
	switch kind {
	case brokers.AMQP:
		return brokertest.AMQPURL()
	case brokers.NATS:
		return brokertest.NATSURL()
	case brokers.Redis:
		return brokertest.RedisURL()
	case brokers.Kafka:
		return "kafka://" + startKafka(t, 0)
	}
	return ""
}

// startKafka starts an in-process Kafka cluster on port (0: any) and
// returns its address.
func startKafka(t *testing.T, port int) string {
	t.Helper()
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.DefaultNumPartitions(4), kfake.AllowAutoTopicCreation()}
	if port != 0 {
		opts = append(opts, kfake.Ports(port))
	}
	return brokertest.StartKafka(t, opts...).ListenAddrs()[0]
}

var allKinds = []brokers.Kind{brokers.GoChannel, brokers.AMQP, brokers.NATS, brokers.Redis, brokers.Kafka}

func open(t *testing.T, url string, opts brokers.Options) *brokers.Broker {
	t.Helper()
	opts.ConsumerGroup = cmp.Or(opts.ConsumerGroup, brokertest.RandomName("test-"))
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	b, err := brokers.Open(t.Context(), url, opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, b.Close())
		require.NoError(t, b.Close(), "Close twice")
	})
	return b
}

// TestRoundTrip publishes keyed messages through every broker, before
// anyone subscribes (except on GoChannel, which keeps nothing), and
// receives each once, in order per key, with UUID and metadata intact.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for _, kind := range allKinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			b := open(t, testURL(t, kind), brokers.Options{})
			require.Equal(t, kind, b.Kind)
			require.NoError(t, b.Health(t.Context()), "%s must run on this machine: run `make test`, or scripts/ensure-services.sh rabbitmq nats redis", b)
			topic := brokertest.NewTopic(t, b)

			msgs := brokertest.KeyedMessages(60, 3)
			var ch <-chan *message.Message
			subscribe := func() {
				var err error
				ch, err = b.Subscriber.Subscribe(t.Context(), topic)
				require.NoError(t, err)
			}
			if kind == brokers.GoChannel {
				subscribe()
				go func() { require.NoError(t, b.Publisher.Publish(topic, msgs...)) }()
			} else {
				require.NoError(t, b.Publisher.Publish(topic, msgs...))
				subscribe()
			}
			brokertest.RequireKeyOrder(t, msgs, brokertest.Receive(t, ch, len(msgs)))
		})
	}
}

// hostOf returns the host:port of a broker URL.
func hostOf(t *testing.T, url string) string {
	cfg, err := brokers.ParseURL(url)
	require.NoError(t, err)
	return cfg.Addrs[0]
}

// TestStartsWithoutBroker opens each broker at an address where nothing
// listens yet: Open returns, Publish and Health fail with ErrUnreachable,
// Subscribe returns a channel. Then the broker appears there; without
// any call on the Broker, it connects, and the subscriber receives what
// is published from then on.
func TestStartsWithoutBroker(t *testing.T) {
	t.Parallel()
	for _, kind := range allKinds[1:] {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			var url string
			var appear func()
			if kind == brokers.Kafka {
				// Kafka clients reconnect to the advertised address, so
				// the cluster itself starts late on a port of its own.
				port := brokertest.FreePort(t)
				url = "kafka://127.0.0.1:" + strconv.Itoa(port)
				appear = func() { startKafka(t, port) }
			} else {
				real := testURL(t, kind)
				p := lateproxy.New(t, hostOf(t, real))
				url = p.URL(real)
				appear = func() { p.Start(t) }
			}
			start := time.Now()
			b := open(t, url, brokers.Options{
				ConnectTimeout: time.Second, MinReconnect: 100 * time.Millisecond, MaxReconnect: 200 * time.Millisecond,
			})
			require.Less(t, time.Since(start), 4*time.Second, "Open waits for one attempt only")
			topic := brokertest.RandomTopic()

			err := b.Publisher.Publish(topic, brokertest.KeyedMessages(1, 1)...)
			require.ErrorIs(t, err, brokers.ErrUnreachable)
			require.ErrorIs(t, err, outbox.ErrPublisherUnavailable)
			require.ErrorIs(t, b.Health(t.Context()), brokers.ErrUnreachable)
			ch, err := b.Subscriber.Subscribe(t.Context(), topic)
			require.NoError(t, err)

			appear()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			require.NoError(t, b.WaitConnected(ctx))
			require.NoError(t, b.Health(ctx))
			t.Cleanup(func() { require.NoError(t, b.DeleteTopic(context.Background(), topic)) })
			msgs := brokertest.KeyedMessages(10, 3)
			require.Eventually(t, func() bool { return b.Publisher.Publish(topic, msgs...) == nil },
				20*time.Second, 100*time.Millisecond)
			// A publish that failed while the connection came up may have
			// sent some messages already: wait for each at least once.
			missing := map[string]bool{}
			for _, m := range msgs {
				missing[m.UUID] = true
			}
			deadline := time.After(30 * time.Second)
			for len(missing) > 0 {
				select {
				case m := <-ch:
					m.Ack()
					delete(missing, m.UUID)
				case <-deadline:
					require.FailNow(t, "timeout", "%d of %d messages not received", len(missing), len(msgs))
				}
			}
		})
	}
}

// TestCloseBeforeConnect closes a Broker whose broker never answered: the
// subscription channel closes and nothing hangs.
func TestCloseBeforeConnect(t *testing.T) {
	t.Parallel()
	b, err := brokers.Open(t.Context(), "amqp://guest:guest@127.0.0.1:1/", brokers.Options{
		ConsumerGroup: "g", ConnectTimeout: 200 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	ch, err := b.Subscriber.Subscribe(t.Context(), "t")
	require.NoError(t, err)
	require.NoError(t, b.Close())
	select {
	case _, ok := <-ch:
		require.False(t, ok)
	case <-time.After(5 * time.Second):
		t.Fatal("the subscription channel did not close")
	}
	require.ErrorIs(t, b.Publisher.Publish("t", brokertest.KeyedMessages(1, 1)...), brokers.ErrClosed)
	require.ErrorIs(t, b.WaitConnected(t.Context()), brokers.ErrClosed)
	_, err = b.Subscriber.Subscribe(t.Context(), "t")
	require.ErrorIs(t, err, brokers.ErrClosed)
}

// TestOpenRejects: only a malformed URL or invalid options fail Open.
func TestOpenRejects(t *testing.T) {
	t.Parallel()
	_, err := brokers.Open(t.Context(), "amqp//nohost", brokers.Options{ConsumerGroup: "g"})
	require.ErrorIs(t, err, brokers.ErrInvalidURL)
	_, err = brokers.Open(t.Context(), "mqtt://127.0.0.1", brokers.Options{ConsumerGroup: "g"})
	require.ErrorIs(t, err, brokers.ErrInvalidURL)
	_, err = brokers.Open(t.Context(), "nats://127.0.0.1:4222", brokers.Options{})
	require.ErrorIs(t, err, brokers.ErrInvalidOptions)
	require.Contains(t, err.Error(), "ConsumerGroup is required")
	_, err = brokers.Open(t.Context(), "redis://127.0.0.1:6379", brokers.Options{ConsumerGroup: "a b"})
	require.ErrorIs(t, err, brokers.ErrInvalidOptions)
	_, err = brokers.Open(t.Context(), "", brokers.Options{MinReconnect: time.Minute, MaxReconnect: time.Second})
	require.ErrorIs(t, err, brokers.ErrInvalidOptions)
}
