package redisstream_test

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
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/redisstream"
)

func redisURL() string {
	return cmp.Or(os.Getenv("TEST_REDIS_URL"), "redis://127.0.0.1:6379/0")
}

func redisOptions(t testing.TB) *redis.Options {
	t.Helper()
	o, err := redis.ParseURL(redisURL())
	require.NoError(t, err)
	return o
}

func randomName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// newPublisher connects a publisher to the test server (cfg.Options
// unless set) and closes it when the test ends.
func newPublisher(t *testing.T, cfg redisstream.Config) *redisstream.Publisher {
	t.Helper()
	if cfg.Options == nil {
		cfg.Options = redisOptions(t)
	}
	pub, err := redisstream.NewPublisher(t.Context(), cfg)
	require.NoError(t, err, "Redis must run at %s (scripts/ensure-services.sh redis)", redisURL())
	t.Cleanup(func() { require.NoError(t, pub.Close()) })
	return pub
}

// newTopic returns a random topic whose stream pub deletes when the test
// ends (before pub closes: cleanups run last-registered first).
func newTopic(t *testing.T, pub *redisstream.Publisher) string {
	t.Helper()
	topic := randomName("txoutbox_test_")
	t.Cleanup(func() { require.NoError(t, pub.DeleteTopic(context.Background(), topic)) })
	return topic
}

// subscribe subscribes a subscriber of a new consumer group to topic and
// closes it when the test ends.
func subscribe(t *testing.T, cfg redisstream.Config, topic string) <-chan *message.Message {
	t.Helper()
	if cfg.Options == nil {
		cfg.Options = redisOptions(t)
	}
	cfg.ConsumerGroup = cmp.Or(cfg.ConsumerGroup, randomName("group_"))
	sub, err := redisstream.NewSubscriber(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, sub.Close()) })
	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)
	return ch
}

// admin is a plain client for looking at streams.
func admin(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(redisOptions(t))
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.Ping(t.Context()).Err(), "Redis must run at %s", redisURL())
	return c
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
		pub := newPublisher(t, redisstream.Config{})
		topic := newTopic(t, pub)
		msgs := keyedMessages(20, 3)
		require.NoError(t, pub.Publish(topic, msgs...))

		ch := subscribe(t, redisstream.Config{}, topic)
		requireSame(t, msgs, receive(t, ch, len(msgs)))
		requireNoMore(t, ch, 300*time.Millisecond)
	})

	t.Run("subscribe first", func(t *testing.T) {
		t.Parallel()
		pub := newPublisher(t, redisstream.Config{})
		topic := newTopic(t, pub)
		ch := subscribe(t, redisstream.Config{}, topic)

		msgs := keyedMessages(20, 3)
		require.NoError(t, pub.Publish(topic, msgs[:7]...))
		require.NoError(t, pub.Publish(topic, msgs[7:]...))
		requireSame(t, msgs, receive(t, ch, len(msgs)))
		requireNoMore(t, ch, 300*time.Millisecond)
	})

	t.Run("no metadata, empty payload", func(t *testing.T) {
		t.Parallel()
		pub := newPublisher(t, redisstream.Config{})
		topic := newTopic(t, pub)
		msg := message.NewMessage(watermill.NewUUID(), nil)
		require.NoError(t, pub.Publish(topic, msg))
		got := receive(t, subscribe(t, redisstream.Config{}, topic), 1)[0]
		require.Equal(t, msg.UUID, got.UUID)
		require.Empty(t, got.Payload)
		require.Empty(t, got.Metadata)
	})
}

func TestBatchOf2000(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, redisstream.Config{})
	topic := newTopic(t, pub)
	msgs := keyedMessages(2000, 50)
	start := time.Now()
	require.NoError(t, pub.Publish(topic, msgs...))
	t.Logf("published 2000 messages in %v", time.Since(start))
	require.EqualValues(t, 2000, admin(t).XLen(t.Context(), topic).Val())

	ch := subscribe(t, redisstream.Config{}, topic)
	requireSame(t, msgs, receive(t, ch, len(msgs)))
}

// publishInBatches publishes msgs in batches of size.
func publishInBatches(t *testing.T, pub *redisstream.Publisher, topic string, msgs []*message.Message, size int) {
	t.Helper()
	for i := 0; i < len(msgs); i += size {
		require.NoError(t, pub.Publish(topic, msgs[i:min(i+size, len(msgs))]...))
	}
}

func TestMaxLen(t *testing.T) {
	t.Parallel()

	t.Run("default keeps everything", func(t *testing.T) {
		t.Parallel()
		pub := newPublisher(t, redisstream.Config{})
		topic := newTopic(t, pub)
		publishInBatches(t, pub, topic, keyedMessages(1000, 1), 100)
		require.EqualValues(t, 1000, admin(t).XLen(t.Context(), topic).Val())
	})

	t.Run("MaxLen trims about to it", func(t *testing.T) {
		t.Parallel()
		const maxLen = 50
		pub := newPublisher(t, redisstream.Config{MaxLen: maxLen})
		topic := newTopic(t, pub)
		msgs := keyedMessages(1000, 1)
		publishInBatches(t, pub, topic, msgs, 100)

		rdb := admin(t)
		node := int64(100)
		if v, err := rdb.ConfigGet(t.Context(), "stream-node-max-entries").Result(); err == nil {
			if n, err := strconv.ParseInt(v["stream-node-max-entries"], 10, 64); err == nil && n > 0 {
				node = n
			}
		}
		n := rdb.XLen(t.Context(), topic).Val()
		t.Logf("MaxLen %d, stream-node-max-entries %d: %d of 1000 entries kept", maxLen, node, n)
		require.GreaterOrEqual(t, n, int64(maxLen), "trimming keeps at least MaxLen")
		require.LessOrEqual(t, n, int64(maxLen)+node, "trimming keeps at most about MaxLen plus a macro-node")

		// The newest entries are the ones kept, in order.
		ch := subscribe(t, redisstream.Config{}, topic)
		requireSame(t, msgs[1000-n:], receive(t, ch, int(n)))
		requireNoMore(t, ch, 300*time.Millisecond)
	})
}

func TestKeyThatIsNotAStream(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, redisstream.Config{})
	topic := randomName("txoutbox_test_")
	rdb := admin(t)
	require.NoError(t, rdb.Set(t.Context(), topic, "not a stream", time.Minute).Err())
	t.Cleanup(func() { rdb.Del(context.Background(), topic) })

	err := pub.Publish(topic, keyedMessages(3, 1)...)
	require.ErrorContains(t, err, "3 of 3 messages failed")
	require.ErrorContains(t, err, "WRONGTYPE")
	require.ErrorContains(t, pub.DeleteTopic(t.Context(), topic), "not a stream")
	require.Equal(t, "not a stream", rdb.Get(t.Context(), topic).Val())
}

func TestReservedMetadataIsRefused(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, redisstream.Config{})
	topic := newTopic(t, pub)
	msgs := keyedMessages(3, 1)
	msgs[2].Metadata.Set("_watermill_message_uuid", "x")
	require.ErrorContains(t, pub.Publish(topic, msgs...), "reserved")
	require.Zero(t, admin(t).Exists(t.Context(), topic).Val(), "nothing of the batch was added")
}

func TestValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, redisstream.Config{Options: &redis.Options{}}.Validate())

	for _, tc := range []struct {
		name string
		cfg  redisstream.Config
		want []string
	}{
		{"no options", redisstream.Config{}, []string{"Options is required (parse a URL with redis.ParseURL"}},
		{"every problem", redisstream.Config{ConnectTimeout: -1, PublishTimeout: -1, MaxLen: -1, NackResendSleep: -1}, []string{
			"Options is required",
			"ConnectTimeout is negative (use 0 for the default)",
			"PublishTimeout is negative",
			"MaxLen is negative",
			"NackResendSleep is negative",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.cfg.Validate()
			require.ErrorIs(t, err, redisstream.ErrInvalidConfig)
			require.Len(t, strings.Split(err.Error(), "\n"), len(tc.want), err.Error())
			for _, w := range tc.want {
				require.ErrorContains(t, err, w)
			}
			_, err = redisstream.NewPublisher(t.Context(), tc.cfg)
			require.ErrorIs(t, err, redisstream.ErrInvalidConfig)
		})
	}

	t.Run("subscriber needs a group", func(t *testing.T) {
		t.Parallel()
		_, err := redisstream.NewSubscriber(t.Context(), redisstream.Config{Options: redisOptions(t)})
		require.ErrorIs(t, err, redisstream.ErrInvalidConfig)
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
	for name, addr := range map[string]string{
		"refused": "127.0.0.1:1",
		"silent":  silentListener(t),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := redisstream.Config{Options: &redis.Options{Addr: addr}, ConsumerGroup: "g", ConnectTimeout: time.Second}
			start := time.Now()
			_, err := redisstream.NewPublisher(t.Context(), cfg)
			require.ErrorContains(t, err, "redisstream: connect to "+addr)
			require.Less(t, time.Since(start), 1500*time.Millisecond)

			start = time.Now()
			_, err = redisstream.NewSubscriber(t.Context(), cfg)
			require.ErrorContains(t, err, "redisstream: connect to "+addr)
			require.Less(t, time.Since(start), 1500*time.Millisecond)
		})
	}
}

func TestPublishAfterClose(t *testing.T) {
	t.Parallel()
	pub, err := redisstream.NewPublisher(t.Context(), redisstream.Config{Options: redisOptions(t)})
	require.NoError(t, err)
	topic := randomName("txoutbox_test_")
	rdb := admin(t)
	t.Cleanup(func() { rdb.Del(context.Background(), topic) })
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

	require.ErrorIs(t, pub.Publish(topic, keyedMessages(1, 1)...), redisstream.ErrClosed)
	require.ErrorIs(t, pub.Ping(t.Context()), redisstream.ErrClosed)
	require.ErrorIs(t, pub.DeleteTopic(t.Context(), topic), redisstream.ErrClosed)
	require.NoError(t, pub.Close(), "Close twice")
}

func TestDeleteTopicOfMissingStream(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, redisstream.Config{})
	require.NoError(t, pub.DeleteTopic(t.Context(), randomName("txoutbox_test_")))
}

// redisServer is a redis-server of the test's own, for what the shared
// one must not do: go away.
type redisServer struct {
	t    *testing.T
	args []string
	port int
	cmd  *exec.Cmd
}

func (s *redisServer) addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

func startRedisServer(t *testing.T) *redisServer {
	t.Helper()
	bin := os.Getenv("TEST_REDIS_SERVER")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("redis-server"); err != nil {
			bin = "/usr/bin/redis-server"
		}
	}
	_, err := os.Stat(bin)
	require.NoError(t, err, "this test runs a redis-server of its own: install it (scripts/ensure-services.sh redis) or set TEST_REDIS_SERVER")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	dir := t.TempDir()
	s := &redisServer{t: t, port: port, args: []string{bin,
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
		// AOF so the stream survives the restart, as it would in production.
		"--appendonly", "yes", "--appendfsync", "always", "--save", "",
	}}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *redisServer) start() {
	s.t.Helper()
	s.cmd = exec.Command(s.args[0], s.args[1:]...)
	require.NoError(s.t, s.cmd.Start())
	c := redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1})
	defer c.Close()
	require.Eventually(s.t, func() bool { return c.Ping(context.Background()).Err() == nil },
		10*time.Second, 20*time.Millisecond, "redis-server did not start")
}

func (s *redisServer) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

func TestSurvivesServerOutage(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	cfg := redisstream.Config{Options: &redis.Options{Addr: srv.addr()}, PublishTimeout: 2 * time.Second}
	pub, err := redisstream.NewPublisher(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, pub.Close()) })
	topic := "outage"
	before := keyedMessages(10, 2)
	require.NoError(t, pub.Publish(topic, before...))

	srv.stop()
	start := time.Now()
	err = pub.Publish(topic, keyedMessages(10, 2)...)
	require.Error(t, err, "Publish while the server is down")
	t.Logf("Publish while down failed after %v: %v", time.Since(start), err)
	require.Error(t, pub.Ping(t.Context()))

	srv.start()
	after := keyedMessages(10, 2)
	require.NoError(t, pub.Publish(topic, after...), "the same publisher publishes again once the server is back")
	require.NoError(t, pub.Ping(t.Context()))

	ch := subscribe(t, cfg, topic)
	requireSame(t, append(before, after...), receive(t, ch, 20))
	requireNoMore(t, ch, 300*time.Millisecond)
}
