package bench_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/outbox"
)

// BenchmarkClaimTopics measures what a forwarder that relays only some
// topics (ForwarderConfig.Topics) pays while another topic has a backlog,
// as when that topic's broker is down: 1,000 due rows of topic "mine",
// written after other-backlog rows of the benchmark's event topic. Each
// iteration claims them with Topics ["mine"] at the default batch size,
// releases the claim, and asks HasDue for the same topic; it reports the
// mean time of each (claim-ms, hasdue-ms).
func BenchmarkClaimTopics(b *testing.B) {
	for _, other := range []int{0, 200_000} {
		b.Run(fmt.Sprintf("other-backlog=%d", other), func(b *testing.B) {
			db, store := nativeStore(b, gormstore.Config{})
			ctx := context.Background()
			if other > 0 {
				fillNative(b, db, store.Table(), other)
			}
			if err := db.Exec(`INSERT INTO ` + store.Table() + ` (uuid, topic, partition_key, payload)
				SELECT gen_random_uuid()::text, 'mine', 'mine-' || (i % 50), convert_to(` + nativePayloadSQL + `, 'UTF8')
				FROM generate_series(1, 1000) AS i`).Error; err != nil {
				b.Fatal(err)
			}
			settle(b, db, store.Table())
			topics := []string{"mine"}
			round := func() (claim, hasDue time.Duration) {
				start := time.Now()
				c, err := store.Claim(ctx, outbox.ClaimParams{Limit: outbox.DefaultBatchSize, Topics: topics})
				if err != nil {
					b.Fatal(err)
				}
				claim = time.Since(start)
				n := len(c.Rows())
				if err := c.Release(ctx); err != nil {
					b.Fatal(err)
				}
				if n != 1000 {
					b.Fatalf("claimed %d rows of 1000", n)
				}
				start = time.Now()
				due, err := store.HasDue(ctx, topics)
				hasDue = time.Since(start)
				if err != nil || !due {
					b.Fatalf("HasDue: %v, %v", due, err)
				}
				return claim, hasDue
			}
			for range 3 { // prepare the statements on the pool's connections
				round()
			}
			var claim, hasDue time.Duration
			b.ResetTimer()
			for range b.N {
				c, h := round()
				claim += c
				hasDue += h
			}
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(b.N) }
			b.ReportMetric(ms(claim), "claim-ms")
			b.ReportMetric(ms(hasDue), "hasdue-ms")
		})
	}
}
