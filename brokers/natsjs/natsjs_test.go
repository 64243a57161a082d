package natsjs_test

import (
	"cmp"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
	"github.com/txoutbox/txoutbox/brokers/natsjs"
	"github.com/txoutbox/txoutbox/outbox"
)

// newPublisher connects a publisher to the test server (cfg.URL unless
// set) and closes it when the test ends.
func newPublisher(t *testing.T, cfg natsjs.Config) *natsjs.Publisher {
	t.Helper()
	cfg.URL = cmp.Or(cfg.URL, brokertest.NATSURL())
	pub, err := natsjs.NewPublisher(t.Context(), cfg)
	require.NoError(t, err, "NATS with JetStream must run at %s (scripts/ensure-services.sh nats)", cfg.URL)
	t.Cleanup(func() { require.NoError(t, pub.Close()) })
	return pub
}

// subscribe subscribes a new subscriber of consumer group group to topic
// and closes it when the test ends.
func subscribe(t *testing.T, cfg natsjs.Config, topic string) <-chan *message.Message {
	t.Helper()
	cfg.URL = cmp.Or(cfg.URL, brokertest.NATSURL())
	cfg.ConsumerGroup = cmp.Or(cfg.ConsumerGroup, brokertest.RandomName("group_"))
	sub, err := natsjs.NewSubscriber(t.Context(), cfg)
	require.NoError(t, err)
	return brokertest.Subscribe(t, sub, topic)
}

// admin is a plain JetStream client for looking at streams.
func admin(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(brokertest.NATSURL())
	require.NoError(t, err, "NATS must run at %s", brokertest.NATSURL())
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return js
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()

	t.Run("publish first", func(t *testing.T) {
		t.Parallel()
		pub := newPublisher(t, natsjs.Config{})
		topic := brokertest.NewTopic(t, pub)
		msgs := brokertest.KeyedMessages(20, 3)
		require.NoError(t, pub.Publish(topic, msgs...))

		group := brokertest.RandomName("group_")
		ch := subscribe(t, natsjs.Config{ConsumerGroup: group}, topic)
		brokertest.RequireSame(t, msgs, brokertest.Receive(t, ch, len(msgs)))
		brokertest.RequireNoMore(t, ch, 300*time.Millisecond)

		s, err := admin(t).Stream(t.Context(), topic)
		require.NoError(t, err)
		require.Equal(t, []string{topic}, s.CachedInfo().Config.Subjects)
		c, err := s.Consumer(t.Context(), group+"_"+topic)
		require.NoError(t, err, "the durable consumer is named ConsumerGroup_topic")
		require.Equal(t, jetstream.DeliverAllPolicy, c.CachedInfo().Config.DeliverPolicy)
		require.Equal(t, jetstream.AckExplicitPolicy, c.CachedInfo().Config.AckPolicy)
	})

	t.Run("subscribe first", func(t *testing.T) {
		t.Parallel()
		pub := newPublisher(t, natsjs.Config{})
		topic := brokertest.NewTopic(t, pub)
		ch := subscribe(t, natsjs.Config{}, topic)

		msgs := brokertest.KeyedMessages(20, 3)
		require.NoError(t, pub.Publish(topic, msgs[:7]...))
		require.NoError(t, pub.Publish(topic, msgs[7:]...))
		brokertest.RequireSame(t, msgs, brokertest.Receive(t, ch, len(msgs)))
		brokertest.RequireNoMore(t, ch, 300*time.Millisecond)
	})
}

func TestBatchOf2000(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, natsjs.Config{})
	topic := brokertest.NewTopic(t, pub)
	msgs := brokertest.KeyedMessages(2000, 50)
	start := time.Now()
	require.NoError(t, pub.Publish(topic, msgs...))
	t.Logf("published 2000 messages in %v", time.Since(start))

	info, err := admin(t).Stream(t.Context(), topic)
	require.NoError(t, err)
	require.EqualValues(t, 2000, info.CachedInfo().State.Msgs)

	ch := subscribe(t, natsjs.Config{}, topic)
	brokertest.RequireSame(t, msgs, brokertest.Receive(t, ch, len(msgs)))
}

func TestDuplicateUUIDIsDropped(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, natsjs.Config{})
	topic := brokertest.NewTopic(t, pub)
	first := message.NewMessage(watermill.NewUUID(), []byte("first"))
	again := message.NewMessage(first.UUID, []byte("again"))
	other := message.NewMessage(watermill.NewUUID(), []byte("other"))
	require.NoError(t, pub.Publish(topic, first))
	// As the forwarder does after a crash: the whole batch again, the
	// duplicate in it too.
	require.NoError(t, pub.Publish(topic, again, other, first))

	s, err := admin(t).Stream(t.Context(), topic)
	require.NoError(t, err)
	require.EqualValues(t, 2, s.CachedInfo().State.Msgs, "JetStream stores each UUID once")

	ch := subscribe(t, natsjs.Config{}, topic)
	got := brokertest.Receive(t, ch, 2)
	require.Equal(t, "first", string(got[0].Payload))
	require.Equal(t, "other", string(got[1].Payload))
	brokertest.RequireNoMore(t, ch, 300*time.Millisecond)
}

func TestDisableAutoProvision(t *testing.T) {
	t.Parallel()
	cfg := natsjs.Config{DisableAutoProvision: true}
	pub := newPublisher(t, cfg)
	topic := brokertest.NewTopic(t, pub)
	js := admin(t)

	err := pub.Publish(topic, brokertest.KeyedMessages(3, 1)...)
	require.ErrorIs(t, err, natsjs.ErrNoStream)
	require.ErrorContains(t, err, "create one")
	_, err = js.Stream(t.Context(), topic)
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound, "Publish must not create the stream")

	// The operator creates a stream of another name for the subject.
	stream := brokertest.RandomName("OPS_")
	_, err = js.CreateStream(t.Context(), jetstream.StreamConfig{Name: stream, Subjects: []string{topic}})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, js.DeleteStream(context.Background(), stream)) })

	msgs := brokertest.KeyedMessages(5, 2)
	require.NoError(t, pub.Publish(topic, msgs...))
	ch := subscribe(t, cfg, topic)
	brokertest.RequireSame(t, msgs, brokertest.Receive(t, ch, len(msgs)))
}

func TestStreamDeletedBehindThePublisher(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, natsjs.Config{})
	topic := brokertest.NewTopic(t, pub)
	require.NoError(t, pub.Publish(topic, brokertest.KeyedMessages(1, 1)...))
	require.NoError(t, admin(t).DeleteStream(t.Context(), topic))

	err := pub.Publish(topic, brokertest.KeyedMessages(1, 1)...)
	require.ErrorIs(t, err, natsjs.ErrNoStream, "never a silent drop")
	msgs := brokertest.KeyedMessages(3, 1)
	require.NoError(t, pub.Publish(topic, msgs...), "the next Publish provisions the stream again")
	brokertest.RequireSame(t, msgs, brokertest.Receive(t, subscribe(t, natsjs.Config{}, topic), 3))
}

func TestTopicThatIsNoStreamName(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, natsjs.Config{})
	err := pub.Publish("orders.placed", brokertest.KeyedMessages(1, 1)...)
	require.ErrorContains(t, err, "not a valid stream name")
	require.ErrorContains(t, err, "DisableAutoProvision")
}

func TestReservedMetadataIsRefused(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, natsjs.Config{})
	topic := brokertest.NewTopic(t, pub)
	msg := message.NewMessage(watermill.NewUUID(), nil)
	msg.Metadata.Set("Nats-Expected-Stream", "elsewhere")
	require.ErrorContains(t, pub.Publish(topic, msg), "reserved")
}

func TestValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, natsjs.Config{URL: "nats://127.0.0.1:4222"}.Validate())
	require.NoError(t, natsjs.Config{URL: "nats://a:4222, tls://b:4222,127.0.0.1:4222", ConsumerGroup: "read-model_1"}.Validate())

	for _, tc := range []struct {
		name string
		cfg  natsjs.Config
		want []string
	}{
		{"no URL", natsjs.Config{}, []string{"URL is required (for example nats://"}},
		{"wrong scheme", natsjs.Config{URL: "http://u:secret@127.0.0.1:4222"}, []string{`scheme "http" is not nats`}},
		{"bad group", natsjs.Config{URL: brokertest.NATSURL(), ConsumerGroup: "a.b"}, []string{`ConsumerGroup "a.b": only letters`}},
		{"replicas", natsjs.Config{URL: brokertest.NATSURL(), Replicas: 7}, []string{"Replicas is 7; JetStream allows 1 to 5"}},
		{"every problem", natsjs.Config{ConnectTimeout: -1, PublishTimeout: -1, MaxPending: -1, AckWait: -1}, []string{
			"URL is required",
			"ConnectTimeout is negative (use 0 for the default)",
			"PublishTimeout is negative",
			"MaxPending is negative",
			"AckWait is negative",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.cfg.Validate()
			require.ErrorIs(t, err, natsjs.ErrInvalidConfig)
			require.Len(t, strings.Split(err.Error(), "\n"), len(tc.want), err.Error())
			for _, w := range tc.want {
				require.ErrorContains(t, err, w)
			}
			require.NotContains(t, err.Error(), "secret")
			_, err = natsjs.NewPublisher(t.Context(), tc.cfg)
			require.ErrorIs(t, err, natsjs.ErrInvalidConfig)
		})
	}

	t.Run("subscriber needs a group", func(t *testing.T) {
		t.Parallel()
		_, err := natsjs.NewSubscriber(t.Context(), natsjs.Config{URL: brokertest.NATSURL()})
		require.ErrorIs(t, err, natsjs.ErrInvalidConfig)
		require.ErrorContains(t, err, "ConsumerGroup is required")
	})
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	for name, url := range map[string]string{
		"refused": "nats://127.0.0.1:1",
		"silent":  "nats://" + brokertest.SilentListener(t),
		// nats.go gives each server of a list ConnectTimeout of its own;
		// NewPublisher gives all of them ConnectTimeout together.
		"three silent": "nats://" + brokertest.SilentListener(t) + ",nats://" + brokertest.SilentListener(t) + ",nats://" + brokertest.SilentListener(t),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := natsjs.Config{URL: url, ConsumerGroup: "g", ConnectTimeout: time.Second}
			start := time.Now()
			_, err := natsjs.NewPublisher(t.Context(), cfg)
			require.Error(t, err)
			require.ErrorContains(t, err, "natsjs: connect to "+url)
			require.Less(t, time.Since(start), 1500*time.Millisecond)

			start = time.Now()
			_, err = natsjs.NewSubscriber(t.Context(), cfg)
			require.Error(t, err)
			require.Less(t, time.Since(start), 1500*time.Millisecond)
		})
	}
}

func TestPublishAfterClose(t *testing.T) {
	t.Parallel()
	pub, err := natsjs.NewPublisher(t.Context(), natsjs.Config{URL: brokertest.NATSURL()})
	require.NoError(t, err)
	topic := brokertest.RandomTopic()
	t.Cleanup(func() { require.NoError(t, admin(t).DeleteStream(context.Background(), topic)) })
	require.NoError(t, pub.Ping(t.Context()))
	require.NoError(t, pub.Publish(topic, brokertest.KeyedMessages(1, 1)...))

	// Close while a batch is in flight: Publish returns nil or an error,
	// never panics.
	done := make(chan error, 1)
	go func() { done <- pub.Publish(topic, brokertest.KeyedMessages(2000, 1)...) }()
	time.Sleep(time.Millisecond)
	require.NoError(t, pub.Close())
	if err := <-done; err != nil {
		t.Logf("Publish during Close: %v", err)
	}

	require.ErrorIs(t, pub.Publish(topic, brokertest.KeyedMessages(1, 1)...), natsjs.ErrClosed)
	require.ErrorIs(t, pub.Ping(t.Context()), natsjs.ErrClosed)
	require.ErrorIs(t, pub.DeleteTopic(t.Context(), topic), natsjs.ErrClosed)
	require.NoError(t, pub.Close(), "Close twice")
}

func TestDeleteTopicOfMissingStream(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, natsjs.Config{})
	require.NoError(t, pub.DeleteTopic(t.Context(), brokertest.RandomTopic()))
}

// startNATSServer starts a nats-server of the test's own with args, for
// what the shared one must not do: run without JetStream, or go away.
func startNATSServer(t *testing.T, args ...string) *brokertest.Server {
	t.Helper()
	return brokertest.StartServer(t, brokertest.ServerConfig{
		Name:     "nats-server",
		Env:      "TEST_NATS_SERVER",
		Fallback: "/usr/sbin/nats-server",
		Install:  "scripts/ensure-services.sh nats",
		Args: func(port int) []string {
			return append([]string{"-a", "127.0.0.1", "-p", strconv.Itoa(port)}, args...)
		},
	})
}

func TestServerWithoutJetStream(t *testing.T) {
	t.Parallel()
	url := "nats://" + startNATSServer(t).Addr() // no -js
	_, err := natsjs.NewPublisher(t.Context(), natsjs.Config{URL: url})
	require.ErrorIs(t, err, natsjs.ErrNoJetStream)
	require.ErrorContains(t, err, "start nats-server with -js")
	_, err = natsjs.NewSubscriber(t.Context(), natsjs.Config{URL: url, ConsumerGroup: "g"})
	require.ErrorIs(t, err, natsjs.ErrNoJetStream)
}

func TestSurvivesServerOutage(t *testing.T) {
	t.Parallel()
	srv := startNATSServer(t, "-js", "-sd", t.TempDir())
	url := "nats://" + srv.Addr()
	pub, err := natsjs.NewPublisher(t.Context(), natsjs.Config{URL: url, PublishTimeout: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, pub.Close()) })
	topic := "outage"
	before := brokertest.KeyedMessages(10, 2)
	require.NoError(t, pub.Publish(topic, before...))

	srv.Stop()
	require.Eventually(t, func() bool { return pub.Ping(t.Context()) != nil }, 5*time.Second, 10*time.Millisecond)
	start := time.Now()
	err = pub.Publish(topic, brokertest.KeyedMessages(10, 2)...)
	require.Error(t, err, "Publish while the server is down")
	require.ErrorIs(t, err, outbox.ErrPublisherUnavailable, "the forwarder must take it for an outage, not a poison message")
	t.Logf("Publish while down failed after %v: %v", time.Since(start), err)

	srv.Start()
	after := brokertest.KeyedMessages(10, 2)
	require.Eventually(t, func() bool { return pub.Publish(topic, after...) == nil }, 15*time.Second, 100*time.Millisecond,
		"the same publisher publishes again once the server is back")
	require.NoError(t, pub.Ping(t.Context()))

	ch := subscribe(t, natsjs.Config{URL: url}, topic)
	brokertest.RequireSame(t, append(before, after...), brokertest.Receive(t, ch, 20))
	brokertest.RequireNoMore(t, ch, 300*time.Millisecond)
}
