package middleware_test

import (
	"compress/gzip"
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

// DocumentAttached carries a ~10 KB JSON document: a realistic large event
// (an order with its lines and addresses).
type DocumentAttached struct {
	OrderID string     `json:"order_id"`
	Lines   []lineItem `json:"lines"`
}

type lineItem struct {
	SKU         string `json:"sku"`
	Description string `json:"description"`
	Quantity    int    `json:"quantity"`
	PriceCents  int64  `json:"price_cents"`
	Warehouse   string `json:"warehouse"`
}

func (e DocumentAttached) PartitionKey() string { return e.OrderID }

func tenKBDocument(orderID string) DocumentAttached {
	ev := DocumentAttached{OrderID: orderID}
	for i := 0; len(ev.Lines) < 92; i++ {
		ev.Lines = append(ev.Lines, lineItem{
			SKU:         fmt.Sprintf("SKU-%05d", i*7919%100000),
			Description: []string{"Stainless steel bolt M8", "Washer, zinc plated", "Hex nut M8, grade 8", "Cable tie 200 mm"}[i%4],
			Quantity:    1 + i%12,
			PriceCents:  int64(99 + i*37%5000),
			Warehouse:   []string{"AMS-1", "FRA-2", "WAW-1"}[i%3],
		})
	}
	return ev
}

// BenchmarkCompression measures what EncoderConfig.Compressor saves and
// costs for a ~10 KB JSON event: one command on PostgreSQL that inserts
// one business row and emits the event (8 concurrent commands, as in
// BenchmarkDispatch), with no compressor, gzip at BestSpeed and at the
// default level, and zstd. It reports the stored payload bytes per row
// and the Go CPU per command beside ns/op.
func BenchmarkCompression(b *testing.B) {
	db, _ := testdb.OpenPostgres(b)
	ctx := context.Background()
	if err := gormstore.Migrate(ctx, db); err != nil {
		b.Fatal(err)
	}
	if err := db.Exec(ordersDDL).Error; err != nil {
		b.Fatal(err)
	}
	store, err := gormstore.New(db, gormstore.Config{})
	if err != nil {
		b.Fatal(err)
	}
	raw, err := outbox.NewEncoder(outbox.EncoderConfig{}).Encode(outbox.Entry{Event: tenKBDocument("o-0")})
	if err != nil {
		b.Fatal(err)
	}
	if n := len(raw.Message.Payload); n < 9_000 || n > 11_000 {
		b.Fatalf("the document is %d bytes, not ~10 KB", n)
	}
	var seq atomic.Int64
	for _, v := range []struct {
		name string
		c    outbox.Compressor
	}{
		{"compression=none", nil},
		{"compression=gzip-1", outbox.Gzip(gzip.BestSpeed)},
		{"compression=gzip", outbox.Gzip(gzip.DefaultCompression)},
		{"compression=zstd", outbox.Zstd()},
	} {
		b.Run(v.name, func(b *testing.B) {
			if err := db.Exec(`TRUNCATE orders, ` + gormstore.DefaultTable).Error; err != nil {
				b.Fatal(err)
			}
			tm, err := middleware.NewTransactional(middleware.TransactionalConfig{
				DB: db, Store: store,
				Encoder: outbox.NewEncoder(outbox.EncoderConfig{Compressor: v.c}),
			})
			if err != nil {
				b.Fatal(err)
			}
			cb := bus.New(tm.Middleware())
			if err := bus.Register(cb, func(ctx context.Context, cmd benchPlaceOrder) error {
				tx, err := outbox.Tx(ctx)
				if err != nil {
					return err
				}
				if err := tx.Exec("INSERT INTO orders (id, amount) VALUES (?, ?)", cmd.ID, cmd.Amount).Error; err != nil {
					return err
				}
				return outbox.Emit(ctx, tenKBDocument(cmd.ID))
			}); err != nil {
				b.Fatal(err)
			}
			dispatchParallel(b, cb, &seq, 4, benchPlaceOrder{Amount: 1})
			var stored struct{ Payload, Row float64 }
			if err := db.Raw(`SELECT avg(octet_length(payload)) AS payload, avg(pg_column_size(t.*)) AS row FROM ` + gormstore.DefaultTable + ` t`).Scan(&stored).Error; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(stored.Payload, "payload-B/row")
			b.ReportMetric(stored.Row, "row-B")
		})
	}
}

// BenchmarkCompressor measures the compressors alone on the ~10 KB
// document: CPU per compress and per decompress, and the ratio.
func BenchmarkCompressor(b *testing.B) {
	rec, err := outbox.NewEncoder(outbox.EncoderConfig{}).Encode(outbox.Entry{Event: tenKBDocument("o-1")})
	if err != nil {
		b.Fatal(err)
	}
	doc := rec.Message.Payload
	for _, v := range []struct {
		name string
		c    outbox.Compressor
	}{
		{"gzip-1", outbox.Gzip(gzip.BestSpeed)},
		{"gzip", outbox.Gzip(gzip.DefaultCompression)},
		{"zstd", outbox.Zstd()},
	} {
		c := v.c
		z, err := c.Compress(doc)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("compress="+v.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(doc)))
			for b.Loop() {
				if _, err := c.Compress(doc); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(doc))/float64(len(z)), "ratio")
		})
		b.Run("decompress="+v.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(doc)))
			for b.Loop() {
				if _, err := c.Decompress(z); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
