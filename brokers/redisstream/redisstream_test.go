package redisstream_test

import (
	"cmp"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
	"github.com/txoutbox/txoutbox/brokers/redisstream"
	"github.com/txoutbox/txoutbox/outbox"
)

func redisOptions(t testing.TB) *redis.Options {
	t.Helper()
	o, err := redis.ParseURL(brokertest.RedisURL())
	require.NoError(t, err)
	return o
}

// newPublisher connects a publisher to the test server (cfg.Options
// unless set) and closes it when the test ends.
func newPublisher(t *testing.T, cfg redisstream.Config) *redisstream.Publisher {
	t.Helper()
	if cfg.Options == nil {
		cfg.Options = redisOptions(t)
	}
	pub, err := redisstream.NewPublisher(t.Context(), cfg)
	require.NoError(t, err, "Redis must run at %s (scripts/ensure-services.sh redis)", brokertest.RedisURL())
	t.Cleanup(func() { require.NoError(t, pub.Close()) })
	return pub
}

// subscribe subscribes a subscriber of a new consumer group to topic and
// closes it when the test ends.
func subscribe(t *testing.T, cfg redisstream.Config, topic string) <-chan *message.Message {
	t.Helper()
	if cfg.Options == nil {
		cfg.Options = redisOptions(t)
	}
	cfg.ConsumerGroup = cmp.Or(cfg.ConsumerGroup, brokertest.RandomName("group_"))
	sub, err := redisstream.NewSubscriber(t.Context(), cfg)
	require.NoError(t, err)
	return brokertest.Subscribe(t, sub, topic)
}

// admin is a plain client for looking at streams.
func admin(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(redisOptions(t))
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.Ping(t.Context()).Err(), "Redis must run at %s", brokertest.RedisURL())
	return c
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()

	t.Run("publish first", func(t *testing.T) {
		t.Parallel()
		pub := newPublisher(t, redisstream.Config{})
		topic := brokertest.NewTopic(t, pub)
		msgs := brokertest.KeyedMessages(20, 3)
		require.NoError(t, pub.Publish(topic, msgs...))

		ch := subscribe(t, redisstream.Config{}, topic)
		brokertest.RequireSame(t, msgs, brokertest.Receive(t, ch, len(msgs)))
		brokertest.RequireNoMore(t, ch, 300*time.Millisecond)
	})

	t.Run("subscribe first", func(t *testing.T) {
		t.Parallel()
		pub := newPublisher(t, redisstream.Config{})
		topic := brokertest.NewTopic(t, pub)
		ch := subscribe(t, redisstream.Config{}, topic)

		msgs := brokertest.KeyedMessages(20, 3)
		require.NoError(t, pub.Publish(topic, msgs[:7]...))
		require.NoError(t, pub.Publish(topic, msgs[7:]...))
		brokertest.RequireSame(t, msgs, brokertest.Receive(t, ch, len(msgs)))
		brokertest.RequireNoMore(t, ch, 300*time.Millisecond)
	})

	t.Run("no metadata, empty payload", func(t *testing.T) {
		t.Parallel()
		pub := newPublisher(t, redisstream.Config{})
		topic := brokertest.NewTopic(t, pub)
		msg := message.NewMessage(watermill.NewUUID(), nil)
		require.NoError(t, pub.Publish(topic, msg))
		got := brokertest.Receive(t, subscribe(t, redisstream.Config{}, topic), 1)[0]
		require.Equal(t, msg.UUID, got.UUID)
		require.Empty(t, got.Payload)
		require.Empty(t, got.Metadata)
	})
}

func TestBatchOf2000(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, redisstream.Config{})
	topic := brokertest.NewTopic(t, pub)
	msgs := brokertest.KeyedMessages(2000, 50)
	start := time.Now()
	require.NoError(t, pub.Publish(topic, msgs...))
	t.Logf("published 2000 messages in %v", time.Since(start))
	require.EqualValues(t, 2000, admin(t).XLen(t.Context(), topic).Val())

	ch := subscribe(t, redisstream.Config{}, topic)
	brokertest.RequireSame(t, msgs, brokertest.Receive(t, ch, len(msgs)))
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
		topic := brokertest.NewTopic(t, pub)
		publishInBatches(t, pub, topic, brokertest.KeyedMessages(1000, 1), 100)
		require.EqualValues(t, 1000, admin(t).XLen(t.Context(), topic).Val())
	})

	t.Run("MaxLen trims about to it", func(t *testing.T) {
		t.Parallel()
		const maxLen = 50
		pub := newPublisher(t, redisstream.Config{MaxLen: maxLen})
		topic := brokertest.NewTopic(t, pub)
		msgs := brokertest.KeyedMessages(1000, 1)
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
		brokertest.RequireSame(t, msgs[1000-n:], brokertest.Receive(t, ch, int(n)))
		brokertest.RequireNoMore(t, ch, 300*time.Millisecond)
	})
}

func TestKeyThatIsNotAStream(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, redisstream.Config{})
	topic := brokertest.RandomTopic()
	rdb := admin(t)
	require.NoError(t, rdb.Set(t.Context(), topic, "not a stream", time.Minute).Err())
	t.Cleanup(func() { rdb.Del(context.Background(), topic) })

	err := pub.Publish(topic, brokertest.KeyedMessages(3, 1)...)
	require.ErrorContains(t, err, "3 of 3 messages failed")
	require.ErrorContains(t, err, "WRONGTYPE")
	require.ErrorContains(t, pub.DeleteTopic(t.Context(), topic), "not a stream")
	require.Equal(t, "not a stream", rdb.Get(t.Context(), topic).Val())
}

func TestReservedMetadataIsRefused(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, redisstream.Config{})
	topic := brokertest.NewTopic(t, pub)
	msgs := brokertest.KeyedMessages(3, 1)
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

func TestUnreachable(t *testing.T) {
	t.Parallel()
	for name, addr := range map[string]string{
		"refused": "127.0.0.1:1",
		"silent":  brokertest.SilentListener(t),
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
	topic := brokertest.RandomTopic()
	rdb := admin(t)
	t.Cleanup(func() { rdb.Del(context.Background(), topic) })
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

	require.ErrorIs(t, pub.Publish(topic, brokertest.KeyedMessages(1, 1)...), redisstream.ErrClosed)
	require.ErrorIs(t, pub.Ping(t.Context()), redisstream.ErrClosed)
	require.ErrorIs(t, pub.DeleteTopic(t.Context(), topic), redisstream.ErrClosed)
	require.NoError(t, pub.Close(), "Close twice")
}

func TestDeleteTopicOfMissingStream(t *testing.T) {
	t.Parallel()
	pub := newPublisher(t, redisstream.Config{})
	require.NoError(t, pub.DeleteTopic(t.Context(), brokertest.RandomTopic()))
}

// startRedisServer starts a redis-server of the test's own, for what the
// shared one must not do: go away. It appends every write to a file, so
// that the stream survives a restart, as it would in production.
func startRedisServer(t *testing.T) *brokertest.Server {
	t.Helper()
	dir := t.TempDir()
	return brokertest.StartServer(t, brokertest.ServerConfig{
		Name:     "redis-server",
		Env:      "TEST_REDIS_SERVER",
		Fallback: "/usr/bin/redis-server",
		Install:  "scripts/ensure-services.sh redis",
		Args: func(port int) []string {
			return []string{
				"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
				"--appendonly", "yes", "--appendfsync", "always", "--save", "",
			}
		},
		// Serving, not just listening: Redis answers LOADING while it
		// reads the file back.
		Ready: func(addr string) error {
			c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
			defer c.Close()
			return c.Ping(context.Background()).Err()
		},
	})
}

func TestSurvivesServerOutage(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	cfg := redisstream.Config{Options: &redis.Options{Addr: srv.Addr()}, PublishTimeout: 2 * time.Second}
	pub, err := redisstream.NewPublisher(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, pub.Close()) })
	topic := "outage"
	before := brokertest.KeyedMessages(10, 2)
	require.NoError(t, pub.Publish(topic, before...))

	srv.Stop()
	start := time.Now()
	err = pub.Publish(topic, brokertest.KeyedMessages(10, 2)...)
	require.Error(t, err, "Publish while the server is down")
	require.ErrorIs(t, err, outbox.ErrPublisherUnavailable, "the forwarder must take it for an outage, not a poison message")
	t.Logf("Publish while down failed after %v: %v", time.Since(start), err)
	require.Error(t, pub.Ping(t.Context()))

	srv.Start()
	after := brokertest.KeyedMessages(10, 2)
	require.NoError(t, pub.Publish(topic, after...), "the same publisher publishes again once the server is back")
	require.NoError(t, pub.Ping(t.Context()))

	ch := subscribe(t, cfg, topic)
	brokertest.RequireSame(t, append(before, after...), brokertest.Receive(t, ch, 20))
	brokertest.RequireNoMore(t, ch, 300*time.Millisecond)
}
