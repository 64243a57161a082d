package bench_test

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/txoutbox/txoutbox/brokers"
	"github.com/txoutbox/txoutbox/brokers/amqp"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
)

// brokerEvents is the backlog BenchmarkRelayBroker drains per iteration.
const brokerEvents = 50_000

// brokerPrefetch is what the benchmark's RabbitMQ consumer holds
// unacknowledged: with the default of 1 the consumer, not the relay,
// would set the pace.
const brokerPrefetch = 1000

// brokerURL returns the URL of a real broker of kind on this machine; for
// Kafka it starts an in-process kfake cluster of 8 partitions per topic.
func brokerURL(b *testing.B, kind brokers.Kind) string {
	switch kind {
	case brokers.AMQP:
		return cmp.Or(os.Getenv("TEST_AMQP_URL"), "amqp://guest:guest@127.0.0.1:5672/")
	case brokers.NATS:
		return cmp.Or(os.Getenv("TEST_NATS_URL"), "nats://127.0.0.1:4222")
	case brokers.Redis:
		return cmp.Or(os.Getenv("TEST_REDIS_URL"), "redis://127.0.0.1:6379/0")
	case brokers.Kafka:
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(8), kfake.AllowAutoTopicCreation())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(c.Close)
		return "kafka://" + c.ListenAddrs()[0]
	}
	b.Fatalf("no broker URL for %s", kind)
	return ""
}

// BenchmarkRelayBroker drains a pre-filled backlog of 50,000 events (50
// keys, about 200-byte payloads) through outbox.Forwarder into a real
// broker, timed from Run until a consumer on the broker's Subscriber has
// received every event (broker=amqp, natsjs, redisstream, kafka; Kafka on
// the in-process kfake cluster, for correctness and a rough figure). Each
// broker's -floor runs in the same process: the same 50,000 messages,
// ready-made, published by a bare loop through the same publisher in calls
// of the forwarder's batch size, with no database, timed the same way.
// broker=amqp-watermill relays through watermill-amqp/v3's publisher with
// confirms on instead, the stock way to publish to RabbitMQ from Watermill.
// Reports events/s and the CPU time per event of this process (the relay,
// the publisher and the consumer: go-cpu-us/event), of PostgreSQL
// (pg-cpu-us/event), and of every other process (broker-cpu-us/event: the
// broker server, on a quiet machine); run it with -benchtime 1x.
func BenchmarkRelayBroker(b *testing.B) {
	cases := []struct {
		name string
		kind brokers.Kind
		mode drainMode
	}{
		{"amqp", brokers.AMQP, relayDrain},
		{"amqp-floor", brokers.AMQP, floorDrain},
		{"amqp-watermill", brokers.AMQP, watermillAMQPDrain},
		{"natsjs", brokers.NATS, relayDrain},
		{"natsjs-floor", brokers.NATS, floorDrain},
		{"redisstream", brokers.Redis, relayDrain},
		{"redisstream-floor", brokers.Redis, floorDrain},
		{"kafka", brokers.Kafka, relayDrain},
		{"kafka-floor", brokers.Kafka, floorDrain},
	}
	for _, k := range cases {
		b.Run("broker="+k.name, func(b *testing.B) {
			var total time.Duration
			var cpu cpuSample
			for range b.N {
				b.StopTimer()
				r := drainBroker(b, k.kind, k.mode)
				total += r.elapsed
				cpu.goCPU += r.cpu.goCPU
				cpu.pgCPU += r.cpu.pgCPU
				cpu.others += r.cpu.others
			}
			events := float64(brokerEvents) * float64(b.N)
			us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / events }
			b.ReportMetric(events/total.Seconds(), "events/s")
			b.ReportMetric(float64(total.Nanoseconds())/events, "ns/event")
			b.ReportMetric(us(cpu.goCPU), "go-cpu-us/event")
			b.ReportMetric(us(cpu.pgCPU), "pg-cpu-us/event")
			b.ReportMetric(us(cpu.others), "broker-cpu-us/event")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// drainMode is what drainBroker times.
type drainMode int

const (
	// relayDrain: the forwarder drains the outbox through the Broker's
	// publisher.
	relayDrain drainMode = iota
	// floorDrain: a bare loop publishes ready messages through the
	// Broker's publisher, no database.
	floorDrain
	// watermillAMQPDrain: the forwarder drains the outbox through
	// watermill-amqp/v3's publisher with confirms on, the stock choice.
	watermillAMQPDrain
)

// drainBroker runs one drain in mode into a fresh topic of kind and
// returns its wall time and CPU use.
func drainBroker(b *testing.B, kind brokers.Kind, mode drainMode) drainResult {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	slogger, _ := newLogs(b)
	// Every event is on eventTopic; on AMQP it goes to a queue of this
	// drain's own.
	queue := fmt.Sprintf("txoutbox_bench_%d", time.Now().UnixNano())
	br, err := brokers.Open(ctx, brokerURL(b, kind), brokers.Options{
		ConsumerGroup: "bench",
		Logger:        slogger,
		AMQP:          amqp.Config{Queue: func(string) string { return queue }, Prefetch: brokerPrefetch},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	if err := br.WaitConnected(ctx); err != nil {
		b.Fatal(err)
	}
	if err := br.DeleteTopic(ctx, eventTopic); err != nil {
		b.Fatal(err)
	}

	// The consumer subscribes first, so that its set-up is not timed. At
	// the end it stops before the topic is deleted: a subscription that
	// outlived the delete would declare the queue again.
	subCtx, stopSub := context.WithCancel(ctx)
	ch, err := br.Subscriber.Subscribe(subCtx, eventTopic)
	if err != nil {
		b.Fatal(err)
	}
	var got atomic.Int64
	done := make(chan struct{})
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for m := range ch {
			m.Ack()
			if got.Add(1) == brokerEvents {
				close(done)
			}
		}
	}()
	defer func() {
		stopSub()
		<-consumed
		if err := br.DeleteTopic(context.Background(), eventTopic); err != nil {
			b.Error(err)
		}
	}()
	// The subscription exists once a first message round-trips.
	probe := message.NewMessage("probe", []byte("{}"))
	if err := br.Publisher.Publish(eventTopic, probe); err != nil {
		b.Fatal(err)
	}
	waitFor(b, 30*time.Second, func() bool { return got.Load() == 1 })
	got.Store(0)

	var run func() error
	var left func() int64
	if mode == floorDrain {
		msgs := readyMessages(b, brokerEvents)
		run = func() error {
			for i := 0; i < len(msgs); i += outbox.DefaultBatchSize {
				if err := br.Publisher.Publish(eventTopic, msgs[i:min(i+outbox.DefaultBatchSize, len(msgs))]...); err != nil {
					return err
				}
			}
			return nil
		}
		left = func() int64 { return 0 }
	} else {
		db, store := nativeStore(b, gormstore.Config{})
		fillNative(b, db, store.Table(), brokerEvents)
		pub := br.Publisher
		if mode == watermillAMQPDrain {
			pub = watermillAMQPPublisher(b, brokerURL(b, kind), queue)
		}
		fw, err := outbox.NewForwarder(store, pub, outbox.ForwarderConfig{Logger: slogger})
		if err != nil {
			b.Fatal(err)
		}
		fwCtx, stop := context.WithCancel(ctx)
		defer stop()
		runErr := make(chan error, 1)
		run = func() error {
			go func() { runErr <- fw.Run(fwCtx) }()
			select {
			case <-done:
			case err := <-runErr:
				return fmt.Errorf("forwarder stopped: %w", err)
			case <-time.After(drainTimeout):
				return fmt.Errorf("received %d of %d events", got.Load(), brokerEvents)
			}
			stop()
			return <-runErr
		}
		left = func() int64 { return testdb.Count(b, db, store.Table(), "") }
	}
	runtime.GC()

	cpu := sampleCPU()
	b.StartTimer()
	start := time.Now()
	if err := run(); err != nil {
		b.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(drainTimeout):
		b.Fatalf("received %d of %d events", got.Load(), brokerEvents)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	r := drainResult{elapsed: elapsed, cpu: sampleCPU().sub(cpu)}
	if n := left(); n != 0 {
		b.Fatalf("%d rows left in the outbox", n)
	}
	if n := got.Load(); n != brokerEvents {
		b.Fatalf("received %d events, want %d", n, brokerEvents)
	}
	return r
}

// watermillAMQPPublisher is watermill-amqp/v3's publisher on its durable
// queue config with publisher confirms on, publishing to queue.
func watermillAMQPPublisher(b *testing.B, url, queue string) message.Publisher {
	cfg := wamqp.NewDurableQueueConfig(url)
	cfg.Publish.ConfirmDelivery = true
	cfg.Queue.GenerateName = func(string) string { return queue }
	cfg.Publish.GenerateRoutingKey = func(string) string { return queue }
	pub, err := wamqp.NewPublisher(cfg, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = pub.Close() })
	return pub
}
