package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

const consumerName = "test.consumer"

// keyed returns a message of partition key key.
func keyed(key string, payload string) *message.Message {
	msg := message.NewMessage(watermill.NewUUID(), []byte(payload))
	if key != "" {
		msg.Metadata.Set(outbox.MetadataPartitionKey, key)
	}
	msg.Metadata.Set(outbox.MetadataCreatedAt, time.Now().UTC().Format(time.RFC3339Nano))
	return msg
}

// startConsumer runs a consumer of topic "t" on pubsub until the test ends.
func startConsumer(t *testing.T, f *fixture, sub message.Subscriber, cfg inbox.ConsumerConfig) *inbox.Consumer {
	t.Helper()
	cfg.Name = consumerName
	cfg.Topics = []string{"t"}
	cfg.Subscriber = sub
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c, err := f.in.NewConsumer(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	<-c.Running() // a GoChannel drops what is published before
	require.NoError(t, c.Health())
	return c
}

func newGoChannel(t *testing.T) *gochannel.GoChannel {
	t.Helper()
	pubsub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 1024}, watermill.NopLogger{})
	t.Cleanup(func() { _ = pubsub.Close() })
	return pubsub
}

// effectHandler writes one effects row per message, in the batch's
// transaction.
func effectHandler(msg *message.Message) error {
	return writeEffect(msg.Context(), consumerName, msg.UUID)
}

func TestConsumerProcessesEachMessageOnceInBatches(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		pubsub := newGoChannel(t)
		reader := sdkmetric.NewManualReader()
		meters := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		c := startConsumer(t, f, pubsub, inbox.ConsumerConfig{Handler: effectHandler, Workers: 2, BatchSize: 50, MeterProvider: meters})

		var msgs []*message.Message
		for i := range 400 {
			msgs = append(msgs, keyed(fmt.Sprintf("k%d", i%10), "x"))
		}
		// Every message twice: the second delivery is a duplicate.
		require.NoError(t, pubsub.Publish("t", msgs...))
		require.NoError(t, pubsub.Publish("t", msgs...))
		require.Eventually(t, func() bool {
			st := c.Stats()
			return st.Processed+st.Duplicates == 800 && st.InFlight == 0
		}, 30*time.Second, 10*time.Millisecond)
		for _, m := range msgs {
			require.Equal(t, int64(1), f.effects(t, m.UUID), "message %s", m.UUID)
		}
		st := c.Stats()
		require.Equal(t, int64(400), st.Processed)
		require.Equal(t, int64(400), st.Duplicates)
		// The batch-size histogram: 800 messages in fewer than 800
		// transactions, none over BatchSize; the counters agree.
		var rm metricdata.ResourceMetrics
		require.NoError(t, reader.Collect(context.Background(), &rm))
		got := map[string]any{}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				got[m.Name] = m.Data
			}
		}
		sizes := got["txoutbox.inbox.batch.size"].(metricdata.Histogram[int64]).DataPoints[0]
		require.EqualValues(t, 800, sizes.Sum)
		require.Less(t, sizes.Count, uint64(800), "messages shared transactions")
		maxSize, _ := sizes.Max.Value()
		require.LessOrEqual(t, maxSize, int64(50))
		require.EqualValues(t, 400, got["txoutbox.inbox.processed"].(metricdata.Sum[int64]).DataPoints[0].Value)
		require.EqualValues(t, 400, got["txoutbox.inbox.duplicates"].(metricdata.Sum[int64]).DataPoints[0].Value)
	})
}

func TestConsumerHandlerErrorRollsBackOnlyItsMessage(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		pubsub := newGoChannel(t)
		var calls sync.Map
		handler := func(msg *message.Message) error {
			if err := effectHandler(msg); err != nil {
				return err
			}
			if string(msg.Payload) == "flaky" {
				// Fails its first two runs: the one without savepoints
				// and the first with.
				n, _ := calls.LoadOrStore(msg.UUID, new(atomic.Int64))
				if n.(*atomic.Int64).Add(1) <= 2 {
					return errors.New("transient")
				}
			}
			return nil
		}
		c := startConsumer(t, f, pubsub, inbox.ConsumerConfig{Handler: handler, BatchSize: 100, BatchWait: 50 * time.Millisecond, RetryBackoff: time.Millisecond})
		var msgs []*message.Message
		for i := range 50 {
			p := "ok"
			if i%5 == 0 {
				p = "flaky"
			}
			msgs = append(msgs, keyed(fmt.Sprintf("k%d", i), p))
		}
		require.NoError(t, pubsub.Publish("t", msgs...))
		require.Eventually(t, func() bool { return c.Stats().Processed == 50 }, 20*time.Second, 5*time.Millisecond)
		for _, m := range msgs {
			require.Equal(t, int64(1), f.effects(t, m.UUID), "the failed attempt's write was rolled back, the retry's kept")
		}
		require.GreaterOrEqual(t, c.Stats().Failures, int64(10))
		require.Equal(t, int64(0), c.Stats().Parked)
	})
}

func TestConsumerParksPoisonAndHoldsItsKey(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		pubsub := newGoChannel(t)
		var broken atomic.Bool
		broken.Store(true)
		var (
			mu    sync.Mutex
			order []string
		)
		handler := func(msg *message.Message) error {
			if string(msg.Payload) == "poison" && broken.Load() {
				return errors.New("cannot apply")
			}
			if msg.Metadata.Get(outbox.MetadataPartitionKey) == "bad" {
				mu.Lock()
				order = append(order, string(msg.Payload))
				mu.Unlock()
			}
			return effectHandler(msg)
		}
		c := startConsumer(t, f, pubsub, inbox.ConsumerConfig{
			Handler: handler, MaxAttempts: 3, RetryBackoff: time.Millisecond, RedrivePoll: 20 * time.Millisecond,
		})
		poison := keyed("bad", "poison")
		require.NoError(t, pubsub.Publish("t", poison))
		require.Eventually(t, func() bool { return c.Stats().Parked == 1 }, 10*time.Second, time.Millisecond)
		behind := []*message.Message{keyed("bad", "1"), keyed("bad", "2")}
		other := keyed("good", "1")
		// One at a time: a GoChannel does not keep the order of messages
		// published together.
		for i, m := range behind {
			require.NoError(t, pubsub.Publish("t", m))
			require.Eventually(t, func() bool { return c.Stats().Held == int64(i+1) }, 10*time.Second, time.Millisecond)
		}
		require.NoError(t, pubsub.Publish("t", other))
		require.Eventually(t, func() bool { return c.Stats().InFlight == 0 && c.Stats().Held == 2 && c.Stats().Processed == 1 }, 10*time.Second, time.Millisecond)
		require.Equal(t, int64(1), f.effects(t, other.UUID), "another key goes on")

		rows, err := f.in.ListFailed(context.Background(), consumerName, 0, 10)
		require.NoError(t, err)
		require.Len(t, rows, 3)
		require.Equal(t, poison.UUID, rows[0].UUID)
		require.Equal(t, inbox.StatusFailed, rows[0].Status)
		require.Equal(t, 3, rows[0].Attempts)
		require.Contains(t, rows[0].Error, "cannot apply")
		require.Equal(t, "bad", rows[0].PartitionKey)
		require.Equal(t, "t", rows[0].Topic)
		require.Equal(t, []byte("poison"), rows[0].Payload)
		require.WithinDuration(t, time.Now(), rows[0].FailedAt, time.Minute)
		require.Equal(t, "bad", rows[0].Metadata.Get(outbox.MetadataPartitionKey))
		for i, m := range behind {
			require.Equal(t, m.UUID, rows[i+1].UUID)
			require.Equal(t, inbox.StatusHeld, rows[i+1].Status)
			require.Zero(t, f.effects(t, m.UUID))
		}

		// A redelivery of the parked message is a duplicate.
		require.NoError(t, pubsub.Publish("t", poison))
		require.Eventually(t, func() bool { return c.Stats().Duplicates == 1 }, 10*time.Second, time.Millisecond)

		// Retried while still broken: failed again, one more attempt,
		// the held ones stay.
		n, err := f.in.Retry(context.Background(), consumerName, poison.UUID)
		require.NoError(t, err)
		require.Equal(t, int64(1), n)
		require.Eventually(t, func() bool {
			rows, err := f.in.ListFailed(context.Background(), consumerName, 0, 10)
			return err == nil && len(rows) == 3 && rows[0].Attempts == 4 && rows[0].Status == inbox.StatusFailed
		}, 10*time.Second, 5*time.Millisecond)

		// Fixed and retried: the parked message, then the held ones.
		broken.Store(false)
		n, err = f.in.RetryAll(context.Background(), consumerName)
		require.NoError(t, err)
		require.Equal(t, int64(1), n)
		require.Eventually(t, func() bool {
			rows, err := f.in.ListFailed(context.Background(), consumerName, 0, 10)
			return err == nil && len(rows) == 0
		}, 10*time.Second, 5*time.Millisecond)
		for _, m := range append([]*message.Message{poison}, behind...) {
			require.Equal(t, int64(1), f.effects(t, m.UUID))
		}
		mu.Lock()
		require.Equal(t, []string{"poison", "1", "2"}, order, "the key's order is kept")
		mu.Unlock()

		// A new message of the key flows again.
		next := keyed("bad", "3")
		require.NoError(t, pubsub.Publish("t", next))
		require.Eventually(t, func() bool { return f.effects(t, next.UUID) == 1 }, 10*time.Second, 5*time.Millisecond)
	})
}

func TestConsumerKeyContinueAndDiscard(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d, inbox.Config{})
		pubsub := newGoChannel(t)
		handler := func(msg *message.Message) error {
			if string(msg.Payload) == "poison" {
				return inbox.Permanent(errors.New("never"))
			}
			return effectHandler(msg)
		}
		c := startConsumer(t, f, pubsub, inbox.ConsumerConfig{Handler: handler, AfterPark: inbox.KeyContinue, RedrivePoll: 20 * time.Millisecond})
		poison := keyed("k", "poison")
		require.NoError(t, pubsub.Publish("t", poison))
		require.Eventually(t, func() bool { return c.Stats().Parked == 1 }, 10*time.Second, time.Millisecond)
		require.Equal(t, int64(1), c.Stats().Failures, "a permanent error is not retried")
		later := keyed("k", "ok")
		require.NoError(t, pubsub.Publish("t", later))
		require.Eventually(t, func() bool { return f.effects(t, later.UUID) == 1 }, 10*time.Second, time.Millisecond)
		require.Zero(t, c.Stats().Held)

		n, err := f.in.Discard(context.Background(), consumerName, poison.UUID)
		require.NoError(t, err)
		require.Equal(t, int64(1), n)
		rows, err := f.in.ListFailed(context.Background(), consumerName, 0, 10)
		require.NoError(t, err)
		require.Empty(t, rows)
		// Still a duplicate after the discard: the inbox row stays.
		require.NoError(t, pubsub.Publish("t", poison))
		require.Eventually(t, func() bool { return c.Stats().Duplicates == 1 }, 10*time.Second, time.Millisecond)
		require.Equal(t, int64(1), c.Stats().Parked)
	})
}

func TestConsumerUnknownEvents(t *testing.T) {
	t.Parallel()
	type Known struct{ N int }
	type Unknown struct{ N int }
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	encode := func(ev any) *message.Message {
		rec, err := enc.Encode(outbox.Entry{Event: ev})
		require.NoError(t, err)
		return rec.Message
	}
	for _, policy := range []inbox.UnknownPolicy{inbox.UnknownPark, inbox.UnknownSkip} {
		t.Run(fmt.Sprint(policy), func(t *testing.T) {
			t.Parallel()
			eachDialect(t, func(t *testing.T, d testdb.Dialect) {
				f := newFixture(t, d, inbox.Config{})
				pubsub := newGoChannel(t)
				reg := handlers.NewRegistry(handlers.RegistryConfig{})
				require.NoError(t, handlers.RegisterEvent[Known](reg))
				handler := reg.HandlerFunc(func(msg *message.Message, _ any) error { return effectHandler(msg) })
				c := startConsumer(t, f, pubsub, inbox.ConsumerConfig{Handler: handler, UnknownEvents: policy})
				unknown, noName, known := encode(Unknown{1}), message.NewMessage(watermill.NewUUID(), []byte("{}")), encode(Known{2})
				require.NoError(t, pubsub.Publish("t", unknown, noName, known))
				// The known event may finish before the unknown ones are
				// recorded: wait for all three outcomes.
				require.Eventually(t, func() bool {
					st := c.Stats()
					return st.InFlight == 0 && st.Processed == 1 && st.Skipped+st.Parked == 2
				}, 10*time.Second, time.Millisecond)
				require.Equal(t, int64(1), f.effects(t, known.UUID))
				rows, err := f.in.ListFailed(context.Background(), consumerName, 0, 10)
				require.NoError(t, err)
				st := c.Stats()
				if policy == inbox.UnknownSkip {
					require.Equal(t, int64(2), st.Skipped)
					require.Empty(t, rows)
				} else {
					require.Equal(t, int64(2), st.Parked)
					require.Equal(t, int64(2), st.Failures, "parked at the first attempt")
					require.Len(t, rows, 2)
					require.Contains(t, rows[0].Error, "unknown event")
				}
			})
		})
	}
}

func TestConsumerParksMessageWithoutUUID(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.SQLite, inbox.Config{})
	pubsub := newGoChannel(t)
	c := startConsumer(t, f, pubsub, inbox.ConsumerConfig{Handler: effectHandler, Logger: slog.Default()})
	require.NoError(t, pubsub.Publish("t", message.NewMessage("", []byte("x"))))
	require.Eventually(t, func() bool { return c.Stats().Parked == 1 }, 10*time.Second, time.Millisecond)
	rows, err := f.in.ListFailed(context.Background(), consumerName, 0, 10)
	require.NoError(t, err)
	require.Len(t, rows, 1)
	require.ErrorContains(t, errors.New(rows[0].Error), "no UUID")
}

func TestConsumerHealthReportsStall(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.SQLite, inbox.Config{})
	pubsub := newGoChannel(t)
	release := make(chan struct{})
	handler := func(msg *message.Message) error {
		<-release
		return effectHandler(msg)
	}
	c := startConsumer(t, f, pubsub, inbox.ConsumerConfig{Handler: handler, StallAfter: 100 * time.Millisecond})
	require.NoError(t, pubsub.Publish("t", keyed("k", "x")))
	require.Eventually(t, func() bool { return errors.Is(c.Health(), inbox.ErrStalled) }, 10*time.Second, 5*time.Millisecond)
	require.ErrorContains(t, c.Health(), "1 messages waiting")
	close(release)
	require.Eventually(t, func() bool { return c.Health() == nil }, 10*time.Second, 5*time.Millisecond)
}

func TestConsumerConfigErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.SQLite, inbox.Config{})
	_, err := f.in.NewConsumer(inbox.ConsumerConfig{Workers: -1, BatchSize: inbox.MaxBatchSize + 1, MaxAttempts: -1, BatchWait: -1, AfterPark: 7})
	require.ErrorIs(t, err, inbox.ErrInvalidConfig)
	require.ErrorIs(t, err, inbox.ErrNoConsumer)
	for _, want := range []string{"Topics", "Subscriber", "Handler", "Workers -1", "BatchSize 10001", "MaxAttempts -1", "BatchWait", "AfterPark 7"} {
		require.ErrorContains(t, err, want)
	}
	c, err := f.in.NewConsumer(inbox.ConsumerConfig{Name: "x", Topics: []string{"t"}, Subscriber: newGoChannel(t), Handler: effectHandler})
	require.NoError(t, err)
	require.ErrorIs(t, c.Health(), inbox.ErrNotRunning)
}

// A batch whose transaction breaks (here: its connection is killed) is
// retried whole and charges nothing to its messages: even with
// MaxAttempts 1 nothing is parked.
func TestConsumerBrokenTransactionParksNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.Postgres, inbox.Config{})
	pubsub := newGoChannel(t)
	var killed atomic.Int64
	handler := func(msg *message.Message) error {
		tx, err := outbox.Tx(msg.Context())
		if err != nil {
			return err
		}
		if killed.Add(1) <= 3 {
			// The server ends this session: the transaction is gone.
			return tx.Exec("SELECT pg_terminate_backend(pg_backend_pid())").Error
		}
		return effectHandler(msg)
	}
	c := startConsumer(t, f, pubsub, inbox.ConsumerConfig{Handler: handler, MaxAttempts: 1, MaxRetryBackoff: 20 * time.Millisecond, RetryBackoff: time.Millisecond})
	msgs := []*message.Message{keyed("a", "1"), keyed("b", "2")}
	require.NoError(t, pubsub.Publish("t", msgs...))
	require.Eventually(t, func() bool { return c.Stats().Processed == 2 }, 20*time.Second, 5*time.Millisecond)
	require.Zero(t, c.Stats().Parked)
	require.Zero(t, c.Stats().Failures, "nothing charged to the messages")
	for _, m := range msgs {
		require.Equal(t, int64(1), f.effects(t, m.UUID))
	}
}
