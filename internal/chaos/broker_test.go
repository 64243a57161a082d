//go:build chaos

package chaos_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	bamqp "github.com/txoutbox/txoutbox/brokers/amqp"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

// Shape of the broker outage tests.
const (
	outageKeys       = 5
	outageLength     = 5 * time.Second
	outageMinBackoff = 100 * time.Millisecond
	outageMaxBackoff = time.Second
	// outageMaxBatches bounds the batches tried while the broker is down.
	// The backoff allows about 8 in 5s (0.1+0.2+0.4+0.8 s, then one a
	// second); a forwarder that retried at once would try thousands.
	outageMaxBatches = 30
	// outageMaxWarnings bounds the warnings logged while the broker is
	// down: the forwarder logs the first failure and every 10th.
	outageMaxWarnings = 5
)

// TestBrokerOutage runs the broker outage scenario (runBrokerOutage) with
// the publisher of package brokers/amqp, which connects again on the first
// Publish after the broker is back. The same scenario with watermill-amqp's
// publisher is TestBrokerOutageWatermillAMQP, which cannot run under the
// race detector.
func TestBrokerOutage(t *testing.T) {
	runBrokerOutage(t, func(t *testing.T) message.Publisher {
		pub, err := bamqp.NewPublisher(t.Context(), bamqp.Config{URL: amqpURL(), ConnectTimeout: 2 * time.Second})
		require.NoError(t, err)
		return pub
	})
}

// runBrokerOutage stops the RabbitMQ application for five seconds while
// events are committed, then starts it again. The forwarder publishes
// through the publisher newPublisher returns to a durable queue of this
// test's own, read by queueConsumer. While the broker is down the
// forwarder must back off: at most outageMaxBatches batches, at most
// 1 + keys Publish calls per batch, and few log lines. When the broker is
// back it must resume by itself (the forwarder is not touched), and every
// committed event must reach the queue (duplicates allowed: counted by
// message UUID), with no row parked.
func runBrokerOutage(t *testing.T, newPublisher func(t *testing.T) message.Publisher) {
	addr := amqpAddr(t)
	require.True(t, portOpen(addr), "RabbitMQ is not answering at %s (run scripts/ensure-services.sh rabbitmq, or `make test-chaos`)", addr)
	out, err := rabbitmqctl("-q", "ping")
	require.NoError(t, err, "rabbitmqctl cannot reach the local node; this test stops and starts it with rabbitmqctl: %s", out)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, _ := testdb.OpenPostgres(t)
	require.NoError(t, gormstore.Migrate(ctx, db))
	store, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)

	// Cleanups run last-in first-out: the broker is started again (also
	// when the test fails while it is down), then the forwarder, the
	// publisher and the consumer stop, then the queue is deleted.
	queue := "txoutbox_chaos_" + randomHex(6) // also the topic
	declareQueue(t, queue)
	t.Cleanup(func() { deleteQueue(t, queue) })
	consumer := startQueueConsumer(t, queue)
	pub := &countingPublisher{Publisher: newPublisher(t)}
	t.Cleanup(func() { _ = pub.Close() })
	t.Cleanup(func() { ensureRabbitMQ(t, addr) })

	var batches batchLog
	log, logs := newRecordingLogger()
	fw, err := outbox.NewForwarder(store, pub, outbox.ForwarderConfig{
		BatchSize:    100,
		PollInterval: time.Second,
		MinBackoff:   outageMinBackoff,
		MaxBackoff:   outageMaxBackoff,
		Logger:       log,
		OnBatch:      batches.add,
	})
	require.NoError(t, err)
	var (
		commitMu  sync.Mutex
		committed []string // message UUIDs of committed events
	)
	tr, err := middleware.NewTransactional(middleware.TransactionalConfig{
		DB: db, Store: store,
		Encoder: outbox.NewEncoder(outbox.EncoderConfig{Topic: func(string, any) string { return queue }}),
		AfterCommit: []func(middleware.AfterCommitParams){func(p middleware.AfterCommitParams) {
			commitMu.Lock()
			for _, r := range p.Records {
				committed = append(committed, r.Message.UUID)
			}
			commitMu.Unlock()
			fw.Wake()
		}},
	})
	require.NoError(t, err)
	seq := 0
	commit := func() {
		t.Helper()
		require.NoError(t, tr.Run(ctx, "Place", func(ctx context.Context) error {
			return outbox.Emit(ctx, placed{ID: fmt.Sprint(seq), Key: fmt.Sprintf("k%d", seq%outageKeys), Seq: seq / outageKeys})
		}))
		seq++
	}
	allReceived := func(within time.Duration, what string) {
		t.Helper()
		eventually(t, within, 20*time.Millisecond, func() (bool, string) {
			commitMu.Lock()
			want := append([]string(nil), committed...)
			commitMu.Unlock()
			missing := consumer.missing(want)
			return missing == 0, fmt.Sprintf("%d of %d committed events not received", missing, len(want))
		}, what)
	}

	runCtx, stopFw := context.WithCancel(ctx)
	var fwDone sync.WaitGroup
	fwDone.Go(func() {
		if err := fw.Run(runCtx); err != nil {
			t.Errorf("forwarder Run: %v", err)
		}
	})
	t.Cleanup(func() { stopFw(); fwDone.Wait() })

	// Before: the path works.
	for range 100 {
		commit()
	}
	allReceived(30*time.Second, "events not received before the outage")

	// The outage: events keep being committed while the broker is down.
	out, err = rabbitmqctl("stop_app")
	require.NoError(t, err, "rabbitmqctl stop_app: %s", out)
	require.False(t, portOpen(addr), "RabbitMQ still accepts connections after stop_app")
	outageStart := time.Now()
	for time.Since(outageStart) < outageLength {
		commit()
		time.Sleep(50 * time.Millisecond)
	}
	outageEnd := time.Now()
	out, err = rabbitmqctl("start_app")
	require.NoError(t, err, "rabbitmqctl start_app: %s", out)
	started := time.Now()
	out, err = rabbitmqctl("await_startup")
	require.NoError(t, err, "rabbitmqctl await_startup: %s", out)

	// After: more events, then everything arrives without touching the
	// forwarder.
	for range 100 {
		commit()
	}
	allReceived(60*time.Second, "forwarder did not deliver every committed event after the broker came back")
	recovered := time.Now()

	all, outages := batches.between(outageStart, outageEnd)
	calls := pub.between(outageStart, outageEnd)
	warnings := logs.count(slog.LevelWarn, outageStart, outageEnd)
	t.Logf("broker down for %v: %d batches (%d outages), %d Publish calls, %d warnings logged; all %d events received %v after start_app; %d duplicates",
		outageEnd.Sub(outageStart).Round(time.Millisecond), all, outages, calls, warnings, seq, recovered.Sub(started).Round(time.Millisecond), consumer.duplicates())
	require.Positive(t, outages, "no batch met the outage: the test did not exercise it")
	require.LessOrEqual(t, all, outageMaxBatches, "hot loop: too many batches while the broker was down")
	// A failed batch publish is retried message by message, stopping at a
	// key's first failure: at most 1 + keys calls per batch.
	require.LessOrEqual(t, calls, all*(1+outageKeys), "hot loop: too many Publish calls while the broker was down")
	require.LessOrEqual(t, warnings, outageMaxWarnings, "log flood while the broker was down")

	requireDrained(ctx, t, fw, "after the outage")
}

// countingPublisher counts the Publish calls made through it.
type countingPublisher struct {
	message.Publisher
	mu    sync.Mutex
	calls []time.Time
}

func (p *countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	p.calls = append(p.calls, time.Now())
	p.mu.Unlock()
	return p.Publisher.Publish(topic, msgs...)
}

func (p *countingPublisher) between(from, to time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, at := range p.calls {
		if !at.Before(from) && !at.After(to) {
			n++
		}
	}
	return n
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

// dialAMQP connects to amqpURL, failing fast while the broker is down.
func dialAMQP() (*amqp091.Connection, error) {
	return amqp091.DialConfig(amqpURL(), amqp091.Config{
		Dial:      amqp091.DefaultDial(2 * time.Second),
		Heartbeat: 10 * time.Second,
	})
}

// declareQueue declares a durable queue: it survives the broker's restart,
// and with persistent messages so does its content.
func declareQueue(t *testing.T, name string) {
	t.Helper()
	conn, err := dialAMQP()
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDeclare(name, true, false, false, false, nil)
	require.NoError(t, err)
}

func deleteQueue(t *testing.T, name string) {
	conn, err := dialAMQP()
	if err != nil {
		t.Errorf("delete queue %s: %v", name, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err == nil {
		_, err = ch.QueueDelete(name, false, false, false)
	}
	if err != nil {
		t.Errorf("delete queue %s: %v", name, err)
	}
}

// queueConsumer reads a queue and counts the messages by watermill UUID,
// reconnecting when the broker goes away. It is built on amqp091-go
// directly so that what it sees does not depend on the publisher under
// test.
type queueConsumer struct {
	mu       sync.Mutex
	received map[string]int
	log      []delivery // every message whose payload is a placed event, in arrival order
}

func startQueueConsumer(t *testing.T, queue string) *queueConsumer {
	c := &queueConsumer{received: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	var done sync.WaitGroup
	done.Go(func() {
		for ctx.Err() == nil {
			c.session(ctx, queue)
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	})
	t.Cleanup(func() { cancel(); done.Wait() })
	return c
}

// session consumes until ctx ends or the connection is lost.
func (c *queueConsumer) session(ctx context.Context, queue string) {
	conn, err := dialAMQP()
	if err != nil {
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	if err := ch.Qos(200, 0, false); err != nil {
		return
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case d, ok := <-deliveries:
			if !ok {
				return
			}
			msg, err := amqp.DefaultMarshaler{}.Unmarshal(d)
			if err == nil {
				e, perr := decodePlaced(msg)
				c.mu.Lock()
				c.received[msg.UUID]++
				if perr == nil {
					c.log = append(c.log, delivery{UUID: msg.UUID, Event: e, At: time.Now()})
				}
				c.mu.Unlock()
			}
			_ = d.Ack(false)
		}
	}
}

// missing returns how many of uuids were not received.
func (c *queueConsumer) missing(uuids []string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, u := range uuids {
		if c.received[u] == 0 {
			n++
		}
	}
	return n
}

// count returns the number of messages received, duplicates included.
func (c *queueConsumer) count() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, k := range c.received {
		n += int64(k)
	}
	return n
}

// deliveries returns the placed events received, in arrival order.
func (c *queueConsumer) deliveries() []delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]delivery(nil), c.log...)
}

func (c *queueConsumer) duplicates() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.received {
		n += k - 1
	}
	return n
}
