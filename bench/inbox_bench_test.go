package bench_test

import (
	"context"
	"log/slog"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// inboxEvents is the backlog BenchmarkInbox consumes per iteration.
const inboxEvents = 50_000

// inboxConsumer is the consumer name the benchmark records in the inbox.
const inboxConsumer = "bench.projection"

// BenchmarkInbox consumes 50,000 events (50 partition keys, the metadata
// the outbox encoder writes) from a Watermill GoChannel into a projection
// that inserts one row per event on PostgreSQL, in the inbox's
// transaction, and checks after each drain that the projection holds
// exactly 50,000 rows of 50,000 distinct events.
//
//   - workers=1,batch=1 is today's shape: a Watermill message.Router with
//     one handler wrapped in Inbox.Middleware, one transaction per message,
//     in order. Its GoChannel blocks each publish until the subscriber acks
//     (BlockPublishUntilSubscriberAck), so the router gets one message at a
//     time, as from a broker subscriber that waits for each ack (AMQP
//     without Concurrent, for one). Without it, the router would run each
//     of the 50,000 messages in a goroutine of its own at once, which is
//     neither in order nor what users run.
//   - workers=8,batch=100 is inbox.Consumer with 8 workers by partition
//     key and batches of up to 100 messages, on a GoChannel that does not
//     wait for acks, so the Consumer can hold many messages at once (the
//     GoChannel hands each over from a goroutine of its own, in no
//     particular order, which does not matter here).
//
// In both, the consumer subscribes first (a GoChannel drops what is
// published before) and the clock starts before the backlog is published:
// publishing is part of the drain, as a broker's delivery would be. For
// the router it stops when Publish returns, that is when the last message
// was acked; for the Consumer when its Stats count the last message
// committed (its ack follows). Each iteration starts with empty projection
// and inbox tables. Besides events/s, it reports the CPU time per event of
// this process and of PostgreSQL, and the statements and transactions per
// event sent to PostgreSQL, as BenchmarkRelay does. Run it with
// -benchtime 1x -count 5 (five drains of each shape, one shape after the
// other), or -count 1 in a loop to interleave them.
func BenchmarkInbox(b *testing.B) {
	shapes := []struct {
		name  string
		drain func(*testing.B, *inboxFixture) drainResult
	}{
		{"workers=1,batch=1", drainInboxRouter},
		{"workers=8,batch=100", func(b *testing.B, f *inboxFixture) drainResult { return drainInboxConsumer(b, f, 8, 100) }},
	}
	for _, sh := range shapes {
		b.Run(sh.name, func(b *testing.B) {
			f := newInboxFixture(b)
			var total time.Duration
			var cpu cpuSample
			var sent counts
			for range b.N {
				b.StopTimer()
				f.reset(b)
				before := f.queries.snapshot()
				r := sh.drain(b, f)
				sent = sent.add(f.queries.snapshot().sub(before))
				f.check(b)
				total += r.elapsed
				cpu.goCPU += r.cpu.goCPU
				cpu.pgCPU += r.cpu.pgCPU
				cpu.others += r.cpu.others
			}
			events := float64(inboxEvents) * float64(b.N)
			us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / events }
			b.ReportMetric(events/total.Seconds(), "events/s")
			b.ReportMetric(us(cpu.goCPU), "go-cpu-us/event")
			b.ReportMetric(us(cpu.pgCPU), "pg-cpu-us/event")
			b.ReportMetric(cpu.othersShare(total), "others-cpu-%")
			b.ReportMetric(float64(sent.statements)/events, "statements/event")
			b.ReportMetric(float64(sent.transactions)/events, "tx/event")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// inboxFixture is a schema with an inbox and the projection table, on a
// pool whose statements are counted, and the backlog to consume.
type inboxFixture struct {
	db      *gorm.DB
	queries *queryCounter
	in      *inbox.Inbox
	msgs    []*message.Message
}

func newInboxFixture(b *testing.B) *inboxFixture {
	b.Helper()
	_, schema := testdb.OpenPostgres(b)
	_, db, qc := openPool(b, schema, nil)
	in, err := inbox.New(db, inbox.Config{})
	if err != nil {
		b.Fatal(err)
	}
	if err := in.Migrate(context.Background()); err != nil {
		b.Fatal(err)
	}
	if err := db.Exec(`CREATE TABLE projection (message_uuid TEXT NOT NULL, partition_key TEXT NOT NULL, payload BYTEA NOT NULL)`).Error; err != nil {
		b.Fatal(err)
	}
	return &inboxFixture{db: db, queries: qc, in: in, msgs: inboxBacklog(b)}
}

// project is the projection's handler: one row per event, in the inbox's
// transaction.
func (f *inboxFixture) project(msg *message.Message) error {
	tx, err := outbox.Tx(msg.Context())
	if err != nil {
		return err
	}
	return tx.Exec("INSERT INTO projection (message_uuid, partition_key, payload) VALUES (?, ?, ?)",
		msg.UUID, msg.Metadata.Get(outbox.MetadataPartitionKey), []byte(msg.Payload)).Error
}

// reset empties the projection and the inbox tables.
func (f *inboxFixture) reset(b *testing.B) {
	b.Helper()
	if err := f.db.Exec("TRUNCATE projection, " + f.in.Table() + ", " + f.in.FailedTable()).Error; err != nil {
		b.Fatal(err)
	}
}

// check fails b unless the projection and the inbox hold every event
// exactly once.
func (f *inboxFixture) check(b *testing.B) {
	b.Helper()
	var rows, distinct int64
	if err := f.db.Raw("SELECT count(*), count(DISTINCT message_uuid) FROM projection").Row().Scan(&rows, &distinct); err != nil {
		b.Fatal(err)
	}
	if rows != inboxEvents || distinct != inboxEvents {
		b.Fatalf("projection has %d rows of %d distinct events, want %d of each", rows, distinct, inboxEvents)
	}
	if n := testdb.Count(b, f.db, f.in.Table(), ""); n != inboxEvents {
		b.Fatalf("inbox has %d rows, want %d", n, inboxEvents)
	}
}

// drainInboxRouter consumes the backlog with a Watermill router whose one
// handler runs the projection under Inbox.Middleware.
func drainInboxRouter(b *testing.B, f *inboxFixture) drainResult {
	pubSub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	defer func() { _ = pubSub.Close() }()
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	var committed atomic.Int64
	h := router.AddConsumerHandler(inboxConsumer, eventTopic, pubSub, f.project)
	// The first middleware is the outermost: it counts what the inbox
	// committed.
	h.AddMiddleware(func(next message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := next(msg)
			if err == nil {
				committed.Add(1)
			}
			return out, err
		}
	}, f.in.Middleware(inboxConsumer))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(ctx) }()
	<-router.Running()
	runtime.GC()

	cpu := sampleCPU()
	b.StartTimer()
	start := time.Now()
	published := make(chan error, 1)
	// The GoChannel copies each message, so the backlog can be published
	// again in the next iteration.
	go func() { published <- pubSub.Publish(eventTopic, f.msgs...) }()
	select {
	case err = <-published:
	case <-time.After(drainTimeout):
		b.Fatalf("router committed %d of %d events in %v", committed.Load(), inboxEvents, drainTimeout)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	r := drainResult{elapsed: elapsed, cpu: sampleCPU().sub(cpu)}

	if err != nil {
		b.Fatalf("Publish: %v", err)
	}
	if err := router.Close(); err != nil {
		b.Fatal(err)
	}
	if err := <-runErr; err != nil {
		b.Fatalf("router.Run: %v", err)
	}
	if n := committed.Load(); n != inboxEvents {
		b.Fatalf("router committed %d events, want %d", n, inboxEvents)
	}
	return r
}

// drainInboxConsumer consumes the backlog with an inbox.Consumer of
// workers workers and batches of up to batch messages.
func drainInboxConsumer(b *testing.B, f *inboxFixture, workers, batch int) drainResult {
	pubSub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 1024}, watermill.NopLogger{})
	defer func() { _ = pubSub.Close() }()
	c, err := f.in.NewConsumer(inbox.ConsumerConfig{
		Name: inboxConsumer, Topics: []string{eventTopic}, Subscriber: pubSub, Handler: f.project,
		Workers: workers, BatchSize: batch, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()
	<-c.Running()
	runtime.GC()

	cpu := sampleCPU()
	b.StartTimer()
	start := time.Now()
	if err := pubSub.Publish(eventTopic, f.msgs...); err != nil {
		b.Fatal(err)
	}
	for c.Stats().Processed < inboxEvents {
		if time.Since(start) > drainTimeout {
			b.Fatalf("consumer committed %d of %d events in %v", c.Stats().Processed, inboxEvents, drainTimeout)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	r := drainResult{elapsed: elapsed, cpu: sampleCPU().sub(cpu)}

	cancel()
	if err := <-runErr; err != nil {
		b.Fatalf("Consumer.Run: %v", err)
	}
	if s := c.Stats(); s.Processed != inboxEvents || s.Duplicates != 0 || s.Failures != 0 {
		b.Fatalf("consumer stats %+v, want %d processed, no duplicates or failures", s, inboxEvents)
	}
	return r
}

// inboxBacklog returns the benchmark's events as the outbox sends them:
// newOrder payloads keyed by customer (50 keys), with the metadata the
// outbox.Encoder sets (name, partition_key, created_at...).
func inboxBacklog(b *testing.B) []*message.Message {
	b.Helper()
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	msgs := make([]*message.Message, inboxEvents)
	for i := range msgs {
		rec, err := enc.Encode(outbox.Entry{Event: newOrder(i)})
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = rec.Message
	}
	return msgs
}
