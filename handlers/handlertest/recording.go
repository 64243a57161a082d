package handlertest

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/outbox"
)

// Recording is the outcome of one command run by a [Kit]: its error, or the
// messages it emitted, encoded as production encodes them.
type Recording struct {
	marshaler cqrs.CommandEventMarshaler
	records   []outbox.Record
	err       error
	noDB      bool
}

// Err returns the command's error, unchanged; nil when it succeeded. A
// command that emitted an event the encoder rejects fails here with the
// encoder's error (outbox.ErrMarshal, outbox.ErrPayloadTooLarge, ...), as it
// fails in production. The assertion helpers of this package fail the test
// when Err is not nil.
func (r *Recording) Err() error { return r.err }

// Records returns the emitted messages in emit order, each with its topic,
// partition key, UUID, metadata and payload. It is empty when the command
// failed.
func (r *Recording) Records() []outbox.Record { return slices.Clone(r.records) }

// Len returns the number of emitted messages.
func (r *Recording) Len() int { return len(r.records) }

// Names returns the event name of each emitted message, in emit order.
func (r *Recording) Names() []string {
	names := make([]string, len(r.records))
	for i, rec := range r.records {
		names[i] = r.marshaler.NameFromMessage(rec.Message)
	}
	return names
}

// Emitted returns the emitted events named like E, decoded into E values in
// emit order with the encoder's marshaler. It fails the test when the
// command failed, when it emitted no E, or when an E message cannot be
// decoded; the message lists what was emitted.
func Emitted[E any](tb testing.TB, rec *Recording) []E {
	tb.Helper()
	if !succeeded(tb, rec) {
		return nil
	}
	reg := handlers.NewRegistry(handlers.RegistryConfig{Marshaler: rec.marshaler})
	if err := handlers.RegisterEvent[E](reg); err != nil {
		tb.Fatalf("handlertest: Emitted[%s]: %v", reflect.TypeFor[E](), err)
		return nil
	}
	name := reg.Names()[0]
	var out []E
	for _, r := range rec.records {
		if rec.marshaler.NameFromMessage(r.Message) != name {
			continue
		}
		ev, err := handlers.DecodeAs[E](reg, r.Message)
		if err != nil {
			tb.Fatalf("handlertest: %v", err)
			return nil
		}
		out = append(out, ev)
	}
	if len(out) == 0 {
		tb.Fatalf("handlertest: expected at least one %s event, %s", name, rec.describe())
		return nil
	}
	return out
}

// NoEvents fails the test unless the command succeeded and emitted nothing.
func NoEvents(tb testing.TB, rec *Recording) {
	tb.Helper()
	if !succeeded(tb, rec) {
		return
	}
	if len(rec.records) > 0 {
		tb.Fatalf("handlertest: expected no events, %s", rec.describe())
	}
}

// EmittedNames fails the test unless the command succeeded and emitted
// exactly the events named names, in this order: it checks count and order
// at once.
func EmittedNames(tb testing.TB, rec *Recording, names ...string) {
	tb.Helper()
	if !succeeded(tb, rec) {
		return
	}
	if got := rec.Names(); !slices.Equal(got, names) {
		want := "no events"
		if len(names) > 0 {
			want = "events [" + strings.Join(names, ", ") + "]"
		}
		tb.Fatalf("handlertest: expected %s, %s", want, rec.describe())
	}
}

// succeeded fails the test for a nil or failed recording.
func succeeded(tb testing.TB, rec *Recording) bool {
	tb.Helper()
	if rec == nil {
		tb.Fatalf("handlertest: nil *Recording (use the result of Kit.Run, Kit.Dispatch or Call)")
		return false
	}
	if rec.err == nil {
		return true
	}
	hint := ""
	if rec.noDB && errors.Is(rec.err, outbox.ErrNoTransaction) {
		hint = "\n\t(the handler uses the database: set handlertest.Config.DB)"
	}
	tb.Fatalf("handlertest: the command failed, so it emitted nothing:\n\t%v%s", rec.err, hint)
	return false
}

// describe lists the emitted messages for failure messages.
func (r *Recording) describe() string {
	if len(r.records) == 0 {
		return "emitted nothing"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "emitted %d:", len(r.records))
	for i, rec := range r.records {
		name := r.marshaler.NameFromMessage(rec.Message)
		if name == "" {
			name = "(no name)"
		}
		fmt.Fprintf(&b, "\n\t%d. %s  topic %q", i+1, name, rec.Topic)
		if rec.PartitionKey != "" {
			fmt.Fprintf(&b, "  partition key %q", rec.PartitionKey)
		}
	}
	return b.String()
}
