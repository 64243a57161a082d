package metajson_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/internal/metajson"
)

// BenchmarkAppend measures the metadata of one saved event as the
// encoder writes it: six keys.
func BenchmarkAppend(b *testing.B) {
	md := message.Metadata{
		"name":           "OrderPlaced",
		"command":        "PlaceOrder",
		"created_at":     "2026-11-27T14:21:48.123456789Z",
		"causation_id":   "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
		"partition_key":  "customer-07",
		"correlation_id": "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
	}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = metajson.Append(buf[:0], md)
	}
}

// BenchmarkAppendNil is BenchmarkAppend into a new buffer
// each time, as gormstore's MySQL and SQLite drivers call it.
func BenchmarkAppendNil(b *testing.B) {
	md := message.Metadata{
		"name":           "OrderPlaced",
		"command":        "PlaceOrder",
		"created_at":     "2026-11-27T14:21:48.123456789Z",
		"causation_id":   "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
		"partition_key":  "customer-07",
		"correlation_id": "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = metajson.Append(nil, md)
	}
}
