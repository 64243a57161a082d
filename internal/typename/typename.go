// Package typename names Go values by their type, as Watermill's cqrs
// package does, without formatting the type's name on every call.
package typename

import (
	"reflect"
	"sync"

	"github.com/ThreeDotsLabs/watermill/components/cqrs"
)

// names holds StructName's answers by type.
var names sync.Map // reflect.Type → string

// StructName returns cqrs.StructName(v) ("PlaceOrder" for a PlaceOrder or
// *PlaceOrder), remembered per type: cqrs.StructName formats and splits
// the type's name at each call, which costs two allocations per command
// or event.
func StructName(v any) string {
	t := reflect.TypeOf(v)
	if n, ok := names.Load(t); ok {
		return n.(string)
	}
	n := cqrs.StructName(v)
	names.Store(t, n)
	return n
}
