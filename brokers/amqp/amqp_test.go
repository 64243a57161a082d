package amqp_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers"
	"github.com/txoutbox/txoutbox/brokers/amqp"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
	"github.com/txoutbox/txoutbox/internal/lateproxy"
	"github.com/txoutbox/txoutbox/outbox"
)

// newPublisher connects a publisher and deletes topic's queue when the
// test ends.
func newPublisher(t *testing.T, topic string) *amqp.Publisher {
	t.Helper()
	pub, err := amqp.NewPublisher(t.Context(), amqp.Config{URL: brokertest.AMQPURL()})
	require.NoError(t, err, "RabbitMQ must run at %s (scripts/ensure-services.sh rabbitmq)", brokertest.AMQPURL())
	t.Cleanup(func() {
		require.NoError(t, pub.DeleteTopic(context.Background(), topic))
		require.NoError(t, pub.Close())
	})
	return pub
}

// TestRoundTrip publishes before any consumer exists (the queue must be
// declared by the publisher, or RabbitMQ drops the messages and confirms
// them) and after a consumer subscribed; both arrive whole and in order.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for _, order := range []string{"publish-first", "subscribe-first"} {
		t.Run(order, func(t *testing.T) {
			t.Parallel()
			topic := brokertest.RandomTopic()
			pub := newPublisher(t, topic)
			sub, err := amqp.NewSubscriber(t.Context(), amqp.Config{URL: brokertest.AMQPURL()})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, sub.Close()) })

			msgs := brokertest.KeyedMessages(200, 7)
			var ch <-chan *message.Message
			if order == "subscribe-first" {
				ch, err = sub.Subscribe(t.Context(), topic)
				require.NoError(t, err)
			}
			require.NoError(t, pub.Publish(topic, msgs...))
			if order == "publish-first" {
				ch, err = sub.Subscribe(t.Context(), topic)
				require.NoError(t, err)
			}
			brokertest.RequireSame(t, msgs, brokertest.Receive(t, ch, len(msgs)))
		})
	}
}

// TestDeliveryProperties reads the queue with a plain AMQP consumer: the
// message-id is the outbox UUID, and the message is persistent.
func TestDeliveryProperties(t *testing.T) {
	t.Parallel()
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	msgs := brokertest.KeyedMessages(3, 3)
	require.NoError(t, pub.Publish(topic, msgs...))

	conn, err := amqp091.Dial(brokertest.AMQPURL())
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	for i, want := range msgs {
		d, ok, err := ch.Get(topic, true)
		require.NoError(t, err)
		require.True(t, ok, "message %d is not in the queue", i)
		require.Equal(t, want.UUID, d.MessageId)
		require.Equal(t, uint8(amqp091.Persistent), d.DeliveryMode)
		require.Equal(t, want.Metadata.Get("partition_key"), d.Headers["partition_key"])
	}
}

// TestUnroutable deletes a queue behind the publisher's back: RabbitMQ
// cannot route the next publish, and Publish must fail instead of
// reporting the confirmed drop as published.
func TestUnroutable(t *testing.T) {
	t.Parallel()
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	require.NoError(t, pub.Publish(topic, brokertest.KeyedMessages(1, 1)...))

	conn, err := amqp091.Dial(brokertest.AMQPURL())
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDelete(topic, false, false, false)
	require.NoError(t, err)

	err = pub.Publish(topic, brokertest.KeyedMessages(5, 2)...)
	require.ErrorIs(t, err, amqp.ErrUnroutable)
	require.Contains(t, err.Error(), "returned 5 of 5")

	// The publisher goes on: a later publish on a declared queue works.
	other := brokertest.RandomTopic()
	t.Cleanup(func() { _ = pub.DeleteTopic(context.Background(), other) })
	require.NoError(t, pub.Publish(other, brokertest.KeyedMessages(2, 1)...))
}

// TestConcurrentPublish publishes from several goroutines at once, each on
// a topic of its own: each topic receives its messages in order.
func TestConcurrentPublish(t *testing.T) {
	t.Parallel()
	pub, err := amqp.NewPublisher(t.Context(), amqp.Config{URL: brokertest.AMQPURL()})
	require.NoError(t, err)
	defer pub.Close()
	topics := []string{brokertest.RandomTopic(), brokertest.RandomTopic(), brokertest.RandomTopic(), brokertest.RandomTopic()}
	msgs := make(map[string][]*message.Message)
	for _, topic := range topics {
		t.Cleanup(func() { _ = pub.DeleteTopic(context.Background(), topic) })
		msgs[topic] = brokertest.KeyedMessages(300, 5)
	}
	errs := make(chan error, len(topics))
	for _, topic := range topics {
		go func() {
			for i := 0; i < 300; i += 50 {
				if err := pub.Publish(topic, msgs[topic][i:i+50]...); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range topics {
		require.NoError(t, <-errs)
	}
	sub, err := amqp.NewSubscriber(t.Context(), amqp.Config{URL: brokertest.AMQPURL(), Prefetch: 100})
	require.NoError(t, err)
	defer sub.Close()
	for _, topic := range topics {
		ch, err := sub.Subscribe(t.Context(), topic)
		require.NoError(t, err)
		brokertest.RequireSame(t, msgs[topic], brokertest.Receive(t, ch, 300))
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	err := amqp.Config{}.Validate()
	require.ErrorIs(t, err, amqp.ErrInvalidConfig)
	require.Contains(t, err.Error(), "URL is required")

	err = amqp.Config{URL: "http://x", ConnectTimeout: -1, Prefetch: -1}.Validate()
	require.ErrorIs(t, err, amqp.ErrInvalidConfig)
	for _, want := range []string{"URL", "ConnectTimeout", "Prefetch"} {
		require.Contains(t, err.Error(), want)
	}
	_, err = amqp.NewPublisher(t.Context(), amqp.Config{})
	require.ErrorIs(t, err, amqp.ErrInvalidConfig)
}

// TestUnreachable: nothing listens on port 1.
func TestUnreachable(t *testing.T) {
	t.Parallel()
	start := time.Now()
	_, err := amqp.NewPublisher(t.Context(), amqp.Config{URL: "amqp://guest:secret@127.0.0.1:1/", ConnectTimeout: time.Second})
	require.Error(t, err)
	require.NotContains(t, err.Error(), "secret")
	_, err = amqp.NewSubscriber(t.Context(), amqp.Config{URL: "amqp://127.0.0.1:1/", ConnectTimeout: time.Second})
	require.Error(t, err)
	require.Less(t, time.Since(start), 5*time.Second)
}

func TestPublishAfterClose(t *testing.T) {
	t.Parallel()
	pub, err := amqp.NewPublisher(t.Context(), amqp.Config{URL: brokertest.AMQPURL()})
	require.NoError(t, err)
	require.NoError(t, pub.Close())
	require.NoError(t, pub.Close())
	require.ErrorIs(t, pub.Publish("t", brokertest.KeyedMessages(1, 1)...), amqp.ErrClosed)
}

// TestPublishWhileBrokerAway: RabbitMQ goes away under a connected
// publisher. Publish fails with an error the forwarder takes for an outage
// (outbox.ErrPublisherUnavailable), and succeeds again on the same
// publisher once RabbitMQ is back.
func TestPublishWhileBrokerAway(t *testing.T) {
	t.Parallel()
	cfg, err := brokers.ParseURL(brokertest.AMQPURL())
	require.NoError(t, err)
	proxy := lateproxy.New(t, cfg.Addrs[0])
	proxy.Start(t)
	pub, err := amqp.NewPublisher(t.Context(), amqp.Config{URL: proxy.URL(brokertest.AMQPURL()), ConnectTimeout: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, pub.Close()) })
	topic := brokertest.NewTopic(t, pub)
	require.NoError(t, pub.Publish(topic, brokertest.KeyedMessages(5, 2)...))

	proxy.Stop()
	err = pub.Publish(topic, brokertest.KeyedMessages(5, 2)...)
	require.Error(t, err)
	require.ErrorIs(t, err, outbox.ErrPublisherUnavailable, "the forwarder must take it for an outage, not a poison message")

	proxy.Start(t)
	require.Eventually(t, func() bool { return pub.Publish(topic, brokertest.KeyedMessages(5, 2)...) == nil },
		10*time.Second, 50*time.Millisecond)
}
