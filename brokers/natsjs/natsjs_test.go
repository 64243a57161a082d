package natsjs_test

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/natsjs"
)

func natsURL() string {
	return cmp.Or(os.Getenv("TEST_NATS_URL"), "nats://127.0.0.1:4222")
}

func randomName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// newPublisher connects a publisher to the test server (cfg.URL unless
// set) and closes it when the test ends.
func newPublisher(t *testing.T, cfg natsjs.Config) *natsjs.Publisher {
	t.Helper()
	cfg.URL = cmp.Or(cfg.URL, natsURL())
	pub, err := natsjs.NewPublisher(t.Context(), cfg)
	require.NoError(t, err, "NATS with JetStream must run at %s (scripts/ensure-services.sh nats)", cfg.URL)
	t.Cleanup(func() { require.NoError(t, pub.Close()) })
	return pub
}

// newTopic returns a random topic whose stream pub deletes when the test
// ends (before pub closes: cleanups run last-registered first).
func newTopic(t *testing.T, pub *natsjs.Publisher) string {
	t.Helper()
	topic := randomName("txoutbox_test_")
	t.Cleanup(func() { require.NoError(t, pub.DeleteTopic(context.Background(), topic)) })
	return topic
}

// subscribe subscribes a new subscriber of consumer group group to topic
// and closes it when the test ends.
func subscribe(t *testing.T, cfg natsjs.Config, topic string) <-chan *message.Message {
	t.Helper()
	cfg.URL = cmp.Or(cfg.URL, natsURL())
	cfg.ConsumerGroup = cmp.Or(cfg.ConsumerGroup, randomName("group_"))
	sub, err := natsjs.NewSubscriber(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, sub.Close()) })
	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)
	return ch
}

// admin is a plain JetStream client for looking at streams.
func admin(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(natsURL())
	require.NoError(t, err, "NATS must run at %s", natsURL())
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return js
}

func keyedMessages(n, keys int) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), fmt.Appendf(nil, `{"seq":%d}`, i))
		msgs[i].Metadata.Set("partition_key", fmt.Sprintf("k%d", i%keys))
		msgs[i].Metadata.Set("name", "OrderPlaced")
		msgs[i].Metadata.Set("seq", strconv.Itoa(i))
	}
	return msgs
}

// receive reads n messages from ch, acking each.
func receive(t *testing.T, ch <-chan *message.Message, n int) []*message.Message {
	t.Helper()
	var got []*message.Message
	timeout := time.After(30 * time.Second)
	for len(got) < n {
		select {
		case m, ok := <-ch:
			require.True(t, ok, "subscription closed after %d of %d messages", len(got), n)
			got = append(got, m)
			m.Ack()
		case <-timeout:
			require.FailNow(t, "timeout", "received %d of %d messages", len(got), n)
		}
	}
	return got
}

// requireNoMore fails if ch delivers a message within d.
func requireNoMore(t *testing.T, ch <-chan *message.Message, d time.Duration) {
	t.Helper()
	select {
	case m := <-ch:
		require.FailNow(t, "unexpected message", "%s %s", m.UUID, m.Payload)
	case <-time.After(d):
	}
}

// requireSame checks that got is want: same messages, same order, UUID,
// payload and metadata intact.
func requireSame(t *testing.T, want, got []*message.Message) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		require.Equal(t, want[i].UUID, got[i].UUID, "message %d", i)
		require.Equal(t, string(want[i].Payload), string(got[i].Payload), "message %d", i)
		require.Equal(t, want[i].Metadata, got[i].Metadata, "message %d", i)
	}
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()

	t.Run("publish first", func(t *testing.T) {
		t.Parallel()
		pub := newPublisher(t, natsjs.Config{})
		topic := newTopic(t, pub)
		msgs := keyedMessages(20, 3)
		require.NoError(t, pub.Publish(topic, msgs...))

		group := randomName("group_")
		ch := subscribe(t, natsjs.Config{ConsumerGroup: group}, topic)
		requireSame(t, msgs, receive(t, ch, len(msgs)))
		requireNoMore(t, ch, 300*time.Millisecond)

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
		topic := newTopic(t, pub)
		ch := subscribe(t, natsjs.Config{}, topic)

		msgs := keyedMessages(20, 3)
		require.NoError(t, pub.Publish(topic, msgs[:7]...))
		require.NoError(t, pub.Publish(topic, msgs[7:]...))
		requireSame(t, msgs, receive(t, ch, len(msgs)))
		requireNoMore(t, ch, 300*time.Millisecond)
	})
}

func TestBatchOf2000(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, natsjs.Config{})
	topic := newTopic(t, pub)
	msgs := keyedMessages(2000, 50)
	start := time.Now()
	require.NoError(t, pub.Publish(topic, msgs...))
	t.Logf("published 2000 messages in %v", time.Since(start))

	info, err := admin(t).Stream(t.Context(), topic)
	require.NoError(t, err)
	require.EqualValues(t, 2000, info.CachedInfo().State.Msgs)

	ch := subscribe(t, natsjs.Config{}, topic)
	requireSame(t, msgs, receive(t, ch, len(msgs)))
}

func TestDuplicateUUIDIsDropped(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, natsjs.Config{})
	topic := newTopic(t, pub)
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
	got := receive(t, ch, 2)
	require.Equal(t, "first", string(got[0].Payload))
	require.Equal(t, "other", string(got[1].Payload))
	requireNoMore(t, ch, 300*time.Millisecond)
}

func TestDisableAutoProvision(t *testing.T) {
	t.Parallel()
	cfg := natsjs.Config{DisableAutoProvision: true}
	pub := newPublisher(t, cfg)
	topic := newTopic(t, pub)
	js := admin(t)

	err := pub.Publish(topic, keyedMessages(3, 1)...)
	require.ErrorIs(t, err, natsjs.ErrNoStream)
	require.ErrorContains(t, err, "create one")
	_, err = js.Stream(t.Context(), topic)
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound, "Publish must not create the stream")

	// The operator creates a stream of another name for the subject.
	stream := randomName("OPS_")
	_, err = js.CreateStream(t.Context(), jetstream.StreamConfig{Name: stream, Subjects: []string{topic}})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, js.DeleteStream(context.Background(), stream)) })

	msgs := keyedMessages(5, 2)
	require.NoError(t, pub.Publish(topic, msgs...))
	ch := subscribe(t, cfg, topic)
	requireSame(t, msgs, receive(t, ch, len(msgs)))
}

func TestStreamDeletedBehindThePublisher(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, natsjs.Config{})
	topic := newTopic(t, pub)
	require.NoError(t, pub.Publish(topic, keyedMessages(1, 1)...))
	require.NoError(t, admin(t).DeleteStream(t.Context(), topic))

	err := pub.Publish(topic, keyedMessages(1, 1)...)
	require.ErrorIs(t, err, natsjs.ErrNoStream, "never a silent drop")
	msgs := keyedMessages(3, 1)
	require.NoError(t, pub.Publish(topic, msgs...), "the next Publish provisions the stream again")
	requireSame(t, msgs, receive(t, subscribe(t, natsjs.Config{}, topic), 3))
}

func TestTopicThatIsNoStreamName(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, natsjs.Config{})
	err := pub.Publish("orders.placed", keyedMessages(1, 1)...)
	require.ErrorContains(t, err, "not a valid stream name")
	require.ErrorContains(t, err, "DisableAutoProvision")
}

func TestReservedMetadataIsRefused(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, natsjs.Config{})
	topic := newTopic(t, pub)
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
		{"bad group", natsjs.Config{URL: natsURL(), ConsumerGroup: "a.b"}, []string{`ConsumerGroup "a.b": only letters`}},
		{"replicas", natsjs.Config{URL: natsURL(), Replicas: 7}, []string{"Replicas is 7; JetStream allows 1 to 5"}},
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
		_, err := natsjs.NewSubscriber(t.Context(), natsjs.Config{URL: natsURL()})
		require.ErrorIs(t, err, natsjs.ErrInvalidConfig)
		require.ErrorContains(t, err, "ConsumerGroup is required")
	})
}

// silentListener accepts TCP connections and never answers, like a host
// that is up but whose server hangs.
func silentListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { _ = c.Close() })
		}
	}()
	return l.Addr().String()
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	for name, url := range map[string]string{
		"refused": "nats://127.0.0.1:1",
		"silent":  "nats://" + silentListener(t),
		// nats.go gives each server of a list ConnectTimeout of its own;
		// NewPublisher gives all of them ConnectTimeout together.
		"three silent": "nats://" + silentListener(t) + ",nats://" + silentListener(t) + ",nats://" + silentListener(t),
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
	pub, err := natsjs.NewPublisher(t.Context(), natsjs.Config{URL: natsURL()})
	require.NoError(t, err)
	topic := randomName("txoutbox_test_")
	t.Cleanup(func() { require.NoError(t, admin(t).DeleteStream(context.Background(), topic)) })
	require.NoError(t, pub.Ping(t.Context()))
	require.NoError(t, pub.Publish(topic, keyedMessages(1, 1)...))

	// Close while a batch is in flight: Publish returns nil or an error,
	// never panics.
	done := make(chan error, 1)
	go func() { done <- pub.Publish(topic, keyedMessages(2000, 1)...) }()
	time.Sleep(time.Millisecond)
	require.NoError(t, pub.Close())
	if err := <-done; err != nil {
		t.Logf("Publish during Close: %v", err)
	}

	require.ErrorIs(t, pub.Publish(topic, keyedMessages(1, 1)...), natsjs.ErrClosed)
	require.ErrorIs(t, pub.Ping(t.Context()), natsjs.ErrClosed)
	require.ErrorIs(t, pub.DeleteTopic(t.Context(), topic), natsjs.ErrClosed)
	require.NoError(t, pub.Close(), "Close twice")
}

func TestDeleteTopicOfMissingStream(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, natsjs.Config{})
	require.NoError(t, pub.DeleteTopic(t.Context(), randomName("txoutbox_test_")))
}

// natsServer is a nats-server of the test's own, for what the shared one
// must not do: run without JetStream, or go away.
type natsServer struct {
	t    *testing.T
	args []string
	port int
	cmd  *exec.Cmd
}

func (s *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

func startNATSServer(t *testing.T, args ...string) *natsServer {
	t.Helper()
	bin := os.Getenv("TEST_NATS_SERVER")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("nats-server"); err != nil {
			bin = "/usr/sbin/nats-server"
		}
	}
	_, err := os.Stat(bin)
	require.NoError(t, err, "this test runs a nats-server of its own: install it (scripts/ensure-services.sh nats) or set TEST_NATS_SERVER")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	s := &natsServer{t: t, args: append([]string{bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port)}, args...), port: port}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *natsServer) start() {
	s.t.Helper()
	s.cmd = exec.Command(s.args[0], s.args[1:]...)
	require.NoError(s.t, s.cmd.Start())
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.port))
		if err == nil {
			_ = c.Close()
			return
		}
		require.True(s.t, time.Now().Before(deadline), "nats-server did not start: %v", err)
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *natsServer) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

func TestServerWithoutJetStream(t *testing.T) {
	t.Parallel()
	srv := startNATSServer(t) // no -js
	_, err := natsjs.NewPublisher(t.Context(), natsjs.Config{URL: srv.url()})
	require.ErrorIs(t, err, natsjs.ErrNoJetStream)
	require.ErrorContains(t, err, "start nats-server with -js")
	_, err = natsjs.NewSubscriber(t.Context(), natsjs.Config{URL: srv.url(), ConsumerGroup: "g"})
	require.ErrorIs(t, err, natsjs.ErrNoJetStream)
}

func TestSurvivesServerOutage(t *testing.T) {
	t.Parallel()
	srv := startNATSServer(t, "-js", "-sd", t.TempDir())
	pub, err := natsjs.NewPublisher(t.Context(), natsjs.Config{URL: srv.url(), PublishTimeout: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, pub.Close()) })
	topic := "outage"
	before := keyedMessages(10, 2)
	require.NoError(t, pub.Publish(topic, before...))

	srv.stop()
	require.Eventually(t, func() bool { return pub.Ping(t.Context()) != nil }, 5*time.Second, 10*time.Millisecond)
	start := time.Now()
	err = pub.Publish(topic, keyedMessages(10, 2)...)
	require.Error(t, err, "Publish while the server is down")
	t.Logf("Publish while down failed after %v: %v", time.Since(start), err)

	srv.start()
	after := keyedMessages(10, 2)
	require.Eventually(t, func() bool { return pub.Publish(topic, after...) == nil }, 15*time.Second, 100*time.Millisecond,
		"the same publisher publishes again once the server is back")
	require.NoError(t, pub.Ping(t.Context()))

	ch := subscribe(t, natsjs.Config{URL: srv.url()}, topic)
	requireSame(t, append(before, after...), receive(t, ch, 20))
	requireNoMore(t, ch, 300*time.Millisecond)
}
