package bench_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
)

// inboxEvents is the backlog BenchmarkInbox consumes per iteration.
const inboxEvents = 50_000

// BenchmarkInbox consumes 50,000 events (50 partition keys, the metadata
// the outbox encoder writes) from a Watermill GoChannel into a projection
// that inserts one row per event on PostgreSQL, in the inbox's
// transaction, and checks that every event was applied exactly once.
//
//   - workers=1,batch=1 is the shape of a Watermill router with
//     inbox.Middleware on a subscriber that hands over one message at a
//     time: one transaction per message, in order. It runs as an
//     inbox.Consumer with one worker and batches of one, on the same
//     GoChannel (a router on a GoChannel that does not wait for acks would
//     run every message in a goroutine of its own, unordered).
//   - workers=8,batch=100 is inbox.Consumer with 8 workers and batches of
//     up to 100 messages, a savepoint per message.
//
// The consumer subscribes first; the clock starts before the 50,000
// messages are published (the GoChannel hands each over from a goroutine
// of its own, without waiting for acks) and stops when the last one is
// acked. Each iteration starts with empty tables. Run it with -benchtime
// 1x -count 5: -count interleaves the two shapes.
func BenchmarkInbox(b *testing.B) {
	for _, shape := range []struct{ workers, batch int }{{1, 1}, {8, 100}} {
		b.Run(fmt.Sprintf("workers=%d,batch=%d", shape.workers, shape.batch), func(b *testing.B) {
			db, _ := testdb.OpenPostgres(b)
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
			msgs := inboxBacklog()
			project := func(msg *message.Message) error {
				tx, err := gormstore.Tx(msg.Context())
				if err != nil {
					return err
				}
				return tx.Exec("INSERT INTO projection (message_uuid, partition_key, payload) VALUES (?, ?, ?)",
					msg.UUID, msg.Metadata.Get(outbox.MetadataPartitionKey), []byte(msg.Payload)).Error
			}
			var total time.Duration
			for range b.N {
				b.StopTimer()
				if err := db.Exec("TRUNCATE projection, " + in.Table() + ", " + in.FailedTable()).Error; err != nil {
					b.Fatal(err)
				}
				pubsub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 1024}, watermill.NopLogger{})
				c, err := in.NewConsumer(inbox.ConsumerConfig{
					Name: "bench.projection", Topics: []string{"orders"}, Subscriber: pubsub, Handler: project,
					Workers: shape.workers, BatchSize: shape.batch, Logger: slog.New(slog.DiscardHandler),
				})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- c.Run(ctx) }()
				<-c.Running()
				b.StartTimer()
				start := time.Now()
				if err := pubsub.Publish("orders", copyAll(msgs)...); err != nil {
					b.Fatal(err)
				}
				for c.Stats().Processed < inboxEvents {
					if time.Since(start) > 10*time.Minute {
						b.Fatalf("consumed %d of %d events in 10 minutes", c.Stats().Processed, inboxEvents)
					}
					time.Sleep(time.Millisecond)
				}
				total += time.Since(start)
				b.StopTimer()
				cancel()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				_ = pubsub.Close()
				var rows, distinct int64
				db.Raw("SELECT count(*), count(DISTINCT message_uuid) FROM projection").Row().Scan(&rows, &distinct)
				if rows != inboxEvents || distinct != inboxEvents {
					b.Fatalf("projection has %d rows of %d distinct events, want %d of each", rows, distinct, inboxEvents)
				}
			}
			b.ReportMetric(float64(inboxEvents*b.N)/total.Seconds(), "events/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// inboxBacklog returns the benchmark's events as the outbox sends them:
// newOrder payloads, keyed by customer (50 keys).
func inboxBacklog() []*message.Message {
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	msgs := make([]*message.Message, inboxEvents)
	for i := range msgs {
		rec, err := enc.Encode(outbox.Entry{Event: newOrder(i)})
		if err != nil {
			panic(err)
		}
		msgs[i] = rec.Message
	}
	return msgs
}

// copyAll copies msgs, so that each iteration publishes fresh messages
// (a message is acked once).
func copyAll(msgs []*message.Message) []*message.Message {
	out := make([]*message.Message, len(msgs))
	for i, m := range msgs {
		out[i] = m.Copy()
	}
	return out
}
