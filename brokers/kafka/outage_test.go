package kafka_test

import (
	"errors"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
	"github.com/txoutbox/txoutbox/brokers/kafka"
	"github.com/txoutbox/txoutbox/outbox"
)

// Shape of the outage test.
const (
	outageKeys   = 5
	outageLength = 4 * time.Second
	// outageMaxBatches bounds the batches tried while the cluster is
	// down. The forwarder's backoff (100ms doubling to 1s) allows about 7
	// in 4s; a forwarder that retried at once would try thousands.
	outageMaxBatches = 25
	// outageMaxRecovery bounds the time from the restart until every
	// event committed so far was received (about 0.3s here). Sarama's
	// circuit breakers, open for 10s after three failed leader lookups,
	// would hold a producer that failed through the outage longer than
	// that for some partitions (9.2s, the one run with the producer kept);
	// the publisher replaces its producer after a failure.
	outageMaxRecovery = 8 * time.Second
)

// TestClusterRestart stops the kfake cluster for four seconds while
// events are committed and the forwarder relays, then starts it again on
// the same ports with the same data directory. While it is down the
// forwarder must back off: at most outageMaxBatches batches, at most
// 1 + keys Publish calls per batch. When it is back, the same publisher
// must succeed again, without being touched, and every committed event
// must reach the consumer group within outageMaxRecovery (duplicates
// allowed and counted), in order per key, with no row parked.
func TestClusterRestart(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	first, err := kfake.NewCluster(kfake.DataDir(dataDir))
	require.NoError(t, err)
	brokers := first.ListenAddrs()
	var ports []int
	for _, addr := range brokers {
		_, port, err := net.SplitHostPort(addr)
		require.NoError(t, err)
		p, err := strconv.Atoi(port)
		require.NoError(t, err)
		ports = append(ports, p)
	}
	var (
		clusterMu sync.Mutex
		cluster   = first
	)
	t.Cleanup(func() {
		clusterMu.Lock()
		defer clusterMu.Unlock()
		cluster.Close()
	})

	topic := brokertest.RandomName("outage-")
	createTopic(t, brokers, topic, 8)
	cfg := kafka.Config{Brokers: brokers, ConsumerGroup: brokertest.RandomName("group-"), Sarama: sessionTimeout}
	pub := &countingPublisher{Publisher: newPublisher(t, cfg)}
	c := consume(t, newSubscriber(t, cfg), topic)
	var batches batchLog
	r := startRelay(t, pub, topic, outageKeys, outbox.ForwarderConfig{
		BatchSize:    100,
		PollInterval: time.Second,
		MinBackoff:   100 * time.Millisecond,
		MaxBackoff:   time.Second,
		OnBatch:      batches.add,
	})

	// Before: the path works.
	r.commit(t, 100)
	r.waitReceived(t, c, 20*time.Second, "events not received before the outage")
	before := r.committedUUIDs()

	// The outage: events keep being committed while the cluster is down.
	first.Close()
	outageStart := time.Now()
	for time.Since(outageStart) < outageLength {
		r.commit(t, 1)
		time.Sleep(50 * time.Millisecond)
	}
	outageEnd := time.Now()
	second, err := kfake.NewCluster(kfake.DataDir(dataDir), kfake.Ports(ports...))
	require.NoError(t, err, "restart the cluster on ports %v", ports)
	restarted := time.Now()
	clusterMu.Lock()
	cluster = second
	clusterMu.Unlock()

	// After: more events, then everything arrives without touching the
	// publisher or the forwarder.
	r.commit(t, 100)
	r.waitReceived(t, c, 30*time.Second, "not every committed event was received after the restart")
	received := time.Since(restarted)
	time.Sleep(200 * time.Millisecond) // room for a late duplicate

	recoveredAt, ok := pub.firstSuccessAfter(restarted)
	require.True(t, ok)
	recovery := recoveredAt.Sub(restarted)
	all, outages := batches.between(outageStart, outageEnd)
	calls := pub.between(outageStart, outageEnd)
	failedCalls, unmarked := 0, 0
	for _, call := range calls {
		if call.Err != nil {
			failedCalls++
			if !errors.Is(call.Err, outbox.ErrPublisherUnavailable) {
				unmarked++
				t.Logf("failed Publish not marked unavailable: %v", call.Err)
			}
		}
	}
	t.Logf("cluster down for %v: %d batches (%d outages), %d Publish calls (%d failed); first successful Publish %v after the restart; all %d events received %v after it; %d duplicates, %d of them of the %d events consumed before the outage",
		outageEnd.Sub(outageStart).Round(time.Millisecond), all, outages, len(calls), failedCalls,
		recovery.Round(time.Millisecond), len(r.committedUUIDs()), received.Round(time.Millisecond), c.duplicates(), c.duplicatesOf(before), len(before))
	require.Positive(t, outages, "no batch met the outage: the test did not exercise it")
	require.Zero(t, unmarked, "a Publish that failed while the cluster was down must say the publisher is unavailable, or a single pending key would be parked")
	require.LessOrEqual(t, all, outageMaxBatches, "hot loop: too many batches while the cluster was down")
	// A failed batch publish is retried message by message, stopping at a
	// key's first failure: at most 1 + keys calls per batch.
	require.LessOrEqual(t, len(calls), all*(1+outageKeys), "hot loop: too many Publish calls while the cluster was down")
	require.Less(t, received, outageMaxRecovery, "the relay took too long to deliver everything after the restart")
	checkKeyOrder(t, c.receipts(), false)
	r.checkDrained(t)
	require.NoError(t, pub.Publisher.(*kafka.Publisher).Ping(t.Context()), "Ping after the restart")
}

// batchLog keeps the BatchInfo of every batch, with its time.
type batchLog struct {
	mu      sync.Mutex
	batches []timedBatch
}

type timedBatch struct {
	At   time.Time
	Info outbox.BatchInfo
}

func (l *batchLog) add(info outbox.BatchInfo) {
	l.mu.Lock()
	l.batches = append(l.batches, timedBatch{At: time.Now(), Info: info})
	l.mu.Unlock()
}

// between returns the number of batches in [from, to], and of outage
// batches among them.
func (l *batchLog) between(from, to time.Time) (all, outages int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range l.batches {
		if !b.At.Before(from) && !b.At.After(to) {
			all++
			if b.Info.Outage {
				outages++
			}
		}
	}
	return all, outages
}
