package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
	"github.com/txoutbox/txoutbox/brokers/kafka"
	"github.com/txoutbox/txoutbox/outbox"
)

// TestPublishSendsBatches publishes 500 messages of one key in one call
// and looks at the produce requests the cluster receives: a few requests
// carrying all 500 records (not one request per message), each with
// acks=-1 (all in-sync replicas) and a producer ID with contiguous
// sequence numbers (the idempotent producer).
func TestPublishSendsBatches(t *testing.T) {
	t.Parallel()
	const n = 500
	cluster := brokertest.StartKafka(t)
	brokers := cluster.ListenAddrs()
	topic := brokertest.RandomName("batches-")
	createTopic(t, brokers, topic, 1)

	type batch struct {
		acks       int16
		producerID int64
		firstSeq   int32
		records    int32
	}
	var (
		mu      sync.Mutex
		batches []batch
		errs    []error
	)
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		pr := req.(*kmsg.ProduceRequest)
		mu.Lock()
		defer mu.Unlock()
		for _, tp := range pr.Topics {
			if tp.Topic != topic {
				continue
			}
			for _, p := range tp.Partitions {
				var rb kmsg.RecordBatch
				if err := rb.ReadFrom(p.Records); err != nil {
					errs = append(errs, err)
					continue
				}
				batches = append(batches, batch{pr.Acks, rb.ProducerID, rb.FirstSequence, rb.NumRecords})
			}
		}
		return nil, nil, false // observe only: the cluster handles it
	})

	pub := newPublisher(t, kafka.Config{Brokers: brokers})
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(outbox.NewUUID(), fmt.Appendf(nil, "%d", i))
		msgs[i].Metadata.Set(outbox.MetadataPartitionKey, "one-key")
	}
	require.NoError(t, pub.Publish(topic, msgs...))

	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, errs, "record batches kfake could not parse")
	sizes := make([]int32, len(batches))
	for i, b := range batches {
		sizes[i] = b.records
	}
	t.Logf("%d messages in %d produce requests of %v records", n, len(batches), sizes)
	// Sent before waiting, the messages queue up while a request is in
	// flight and go out together: 8 to 17 requests here, depending on the
	// machine's load. One round trip per message would make 500.
	require.LessOrEqual(t, len(batches), n/10, "about one produce request per message: the batch is not sent before waiting")
	var total int32
	for i, b := range batches {
		require.EqualValues(t, -1, b.acks, "request %d: acks is not all (WaitForAll)", i)
		require.GreaterOrEqual(t, b.producerID, int64(0), "request %d: no producer ID: not the idempotent producer", i)
		require.Equal(t, batches[0].producerID, b.producerID, "request %d: another producer", i)
		require.Equal(t, total, b.firstSeq, "request %d: sequence numbers not contiguous", i)
		total += b.records
	}
	require.EqualValues(t, n, total, "records produced")
}

// TestPingDeleteTopicClose checks Ping while the cluster is up and after
// it is gone, DeleteTopic on a topic that exists and one that does not,
// and that the publisher refuses calls after Close.
func TestPingDeleteTopicClose(t *testing.T) {
	t.Parallel()
	cluster := brokertest.StartKafka(t)
	brokers := cluster.ListenAddrs()
	topic := brokertest.RandomName("delete-")
	createTopic(t, brokers, topic, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pub, err := kafka.NewPublisher(ctx, kafka.Config{Brokers: brokers, ConnectTimeout: time.Second})
	require.NoError(t, err)

	require.NoError(t, pub.Ping(ctx))
	require.NoError(t, pub.Publish(topic, message.NewMessage(outbox.NewUUID(), []byte("x"))))
	require.NoError(t, pub.DeleteTopic(ctx, topic))
	require.NotContains(t, listTopics(t, brokers), topic, "topic still listed after DeleteTopic")
	require.NoError(t, pub.DeleteTopic(ctx, topic), "DeleteTopic of a topic that does not exist")
	require.NoError(t, pub.DeleteTopic(ctx, brokertest.RandomName("never-created-")))

	cluster.Close()
	start := time.Now()
	require.Error(t, pub.Ping(ctx), "Ping with the cluster gone")
	require.Less(t, time.Since(start), 5*time.Second, "Ping took too long to fail")

	require.NoError(t, pub.Close())
	require.NoError(t, pub.Close(), "second Close")
	require.ErrorIs(t, pub.Publish(topic, message.NewMessage(outbox.NewUUID(), nil)), kafka.ErrClosed)
	require.ErrorIs(t, pub.Ping(ctx), kafka.ErrClosed)
}

func listTopics(t *testing.T, brokers []string) map[string]sarama.TopicDetail {
	t.Helper()
	admin := clusterAdmin(t, brokers)
	defer admin.Close()
	topics, err := admin.ListTopics()
	require.NoError(t, err)
	return topics
}

// TestConnectUnreachable checks that NewPublisher and NewSubscriber fail
// within about ConnectTimeout when nothing listens at the broker address,
// and when the address accepts connections but never answers.
func TestConnectUnreachable(t *testing.T) {
	t.Parallel()
	// A port nobody listens on: connections are refused.
	refused := "127.0.0.1:" + strconv.Itoa(brokertest.FreePort(t))
	// A port that accepts and never answers.
	silent := brokertest.SilentListener(t)

	const timeout = time.Second
	for _, addr := range []string{refused, silent} {
		cfg := kafka.Config{Brokers: []string{addr}, ConsumerGroup: "g", ConnectTimeout: timeout}
		start := time.Now()
		_, err := kafka.NewPublisher(context.Background(), cfg)
		require.Error(t, err, "NewPublisher at %s", addr)
		require.Less(t, time.Since(start), timeout+time.Second, "NewPublisher at %s: %v", addr, err)
		start = time.Now()
		_, err = kafka.NewSubscriber(context.Background(), cfg)
		require.Error(t, err, "NewSubscriber at %s", addr)
		require.Less(t, time.Since(start), timeout+time.Second, "NewSubscriber at %s: %v", addr, err)
		t.Logf("%s: %v", addr, err)
	}

	// The context ends first.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := kafka.NewPublisher(ctx, kafka.Config{Brokers: []string{silent}, ConnectTimeout: time.Minute})
	require.True(t, errors.Is(err, context.DeadlineExceeded), "NewPublisher with an expired context: %v", err)
}
