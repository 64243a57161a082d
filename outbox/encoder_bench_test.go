package outbox_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/txoutbox/txoutbox/outbox"
)

// benchOrderPlaced is the event of middleware's BenchmarkDispatch: a
// string, an int and a partition key.
type benchOrderPlaced struct {
	OrderID string `json:"order_id"`
	Amount  int    `json:"amount"`
}

func (e benchOrderPlaced) PartitionKey() string { return e.OrderID }

var benchCmd = outbox.Command{
	ID:            "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
	Name:          "benchPlaceOrder",
	CorrelationID: "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
}

var benchSizes = []int{1, 10}

// BenchmarkEncodeAll measures the encoder at its defaults (cqrs JSON,
// UUIDv7, the metadata of every event) for one and for ten events.
func BenchmarkEncodeAll(b *testing.B) {
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	for _, n := range benchSizes {
		entries := make([]outbox.Entry, n)
		for i := range entries {
			entries[i] = outbox.Entry{Event: benchOrderPlaced{OrderID: "o-" + strconv.Itoa(i), Amount: i}, Command: benchCmd}
		}
		b.Run("events="+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := enc.EncodeAll(entries); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEmit measures what the middleware does per command around the
// handler's Emit calls, without a database: a collector and its context,
// one Emit per event, and the encoding of the collected entries.
func BenchmarkEmit(b *testing.B) {
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	ctx := context.Background()
	for _, n := range benchSizes {
		b.Run("events="+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				col := outbox.NewCollector(false)
				cctx := outbox.WithCollector(ctx, col, benchCmd)
				for i := range n {
					if err := outbox.Emit(cctx, benchOrderPlaced{OrderID: "o-1", Amount: i}); err != nil {
						b.Fatal(err)
					}
				}
				col.Close()
				if _, err := enc.EncodeAll(col.Entries()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNewUUID measures one message ID.
func BenchmarkNewUUID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = outbox.NewUUID()
	}
}
