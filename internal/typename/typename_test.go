package typename

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill/components/cqrs"
)

type placeOrder struct{}

type generic[T any] struct{}

func TestStructNameIsCQRSStructName(t *testing.T) {
	for _, v := range []any{placeOrder{}, &placeOrder{}, generic[int]{}, 42, "s", nil, []placeOrder{}} {
		for range 2 { // the second answer comes from the cache
			if got, want := StructName(v), cqrs.StructName(v); got != want {
				t.Errorf("StructName(%#v) = %q, cqrs.StructName says %q", v, got, want)
			}
		}
	}
}

func BenchmarkStructName(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = StructName(placeOrder{})
	}
}
