package walrelay

import (
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/txoutbox/txoutbox/outbox"
)

// The slot is confirmed up to the end of the last transaction of the done
// prefix of the stream, whatever order its rows are done in, and a
// transaction split over batches is done once all its rows are.
func TestPublisherConfirmsDonePrefix(t *testing.T) {
	p := newPipeline(3)
	rows := func(ids ...int64) []outbox.Row {
		out := make([]outbox.Row, len(ids))
		for i, id := range ids {
			out[i] = outbox.Row{ID: id}
		}
		return out
	}
	p.add(txn{rows: rows(1, 2), end: 100})
	p.add(txn{rows: rows(3, 4, 5, 6), end: 200})
	p.add(txn{rows: rows(8), end: 300}) // IDs may skip
	pb := &publisher{pipe: p}
	take := func(n int) []outbox.Row {
		got, marks := p.take(n)
		pb.marks = append(pb.marks, marks...)
		return got
	}
	confirmed := func() pglogrepl.LSN { return p.confirmedLSN() }

	b1 := take(3) // 1, 2, 3
	if len(b1) != 3 || len(pb.marks) != 2 {
		t.Fatalf("first batch %v, marks %v", b1, pb.marks)
	}
	pb.done(2)
	pb.done(3)
	pb.advance()
	if confirmed() != 0 {
		t.Fatalf("confirmed %v with row 1 not done", confirmed())
	}
	pb.done(1)
	pb.advance()
	if confirmed() != 100 {
		t.Fatalf("confirmed %v, want 100", confirmed())
	}
	b2 := take(3) // 4, 5, 6
	b3 := take(3) // 8
	if len(b2) != 3 || len(b3) != 1 {
		t.Fatalf("batches %v %v", b2, b3)
	}
	pb.done(8)
	pb.advance()
	if confirmed() != 100 {
		t.Fatalf("confirmed %v past a transaction not done", confirmed())
	}
	for _, id := range []int64{6, 4, 5} {
		pb.done(id)
	}
	pb.advance()
	if confirmed() != 300 || len(pb.marks) != 0 {
		t.Fatalf("confirmed %v, marks %v; want 300 and none", confirmed(), pb.marks)
	}
}
