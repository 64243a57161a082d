package outbox

import (
	"context"
	"fmt"
	"reflect"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Command identifies the command whose handler emitted an event. It becomes
// the causation and correlation metadata of the event's message.
type Command struct {
	// ID is unique per dispatched command; it is the causation ID of the
	// events the command emits.
	ID string
	// Name is the command's name, for example "PlaceOrder".
	Name string
	// CorrelationID is shared by a command, the commands it dispatches, and
	// every event they emit.
	CorrelationID string
}

// Entry is one emitted, not yet encoded event.
type Entry struct {
	// Event is the value passed to Emit; nil for an entry from EmitMessage.
	Event any
	// Message is the already marshaled message passed to EmitMessage.
	Message *message.Message
	// Topic is the topic passed to EmitMessage.
	Topic string
	// Command is the command whose handler emitted the event.
	Command Command
	// Trace is the trace context and baggage of the context Emit was
	// called with, as the global OpenTelemetry propagator writes them
	// (W3C "traceparent", "tracestate", "baggage"); nil when there is none.
	Trace map[string]string
}

// Collector gathers the events emitted during one command. The transactional
// middleware creates one per command and saves its entries just before commit;
// test kits create one to run a handler without a database. It is safe for
// concurrent use by the goroutines of one handler.
type Collector struct {
	mu      sync.Mutex
	entries []Entry
	// first holds the first entry, so a command that emits one event
	// allocates no slice for it.
	first    [1]Entry
	err      error
	readOnly bool
	closed   bool
}

// NewCollector returns an empty collector. A read-only collector rejects
// every Emit with [ErrReadOnly].
func NewCollector(readOnly bool) *Collector {
	c := &Collector{readOnly: readOnly}
	c.entries = c.first[:0]
	return c
}

// ReadOnly reports whether the collector rejects every Emit.
func (c *Collector) ReadOnly() bool { return c.readOnly }

// Entries returns a copy of the collected entries in emit order.
func (c *Collector) Entries() []Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Entry(nil), c.entries...)
}

// Err returns the first error an Emit into this collector returned, or nil.
// A command whose collector has an error must not commit: the handler may
// have ignored the error Emit returned.
func (c *Collector) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close makes every later Emit fail with [ErrCollectorClosed].
func (c *Collector) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
}

// Merge appends the entries of child, typically a nested command's
// collector that completed successfully. It returns child's error, if any,
// without merging.
func (c *Collector) Merge(child *Collector) error {
	child.mu.Lock()
	entries, err := child.entries, child.err
	child.mu.Unlock()
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrCollectorClosed
	}
	c.grow(len(entries))
	c.entries = append(c.entries, entries...)
	return nil
}

// accept reports whether entries of cmd may be added, c.mu held: not when
// the collector is closed or read-only or invalid (the caller's check of
// the entries) is not nil. A problem is kept as the collector's error so
// the command fails even if the caller ignores it.
func (c *Collector) accept(cmd Command, invalid error) error {
	if c.closed {
		return ErrCollectorClosed
	}
	err := invalid
	if c.readOnly {
		err = fmt.Errorf("%w (command %s)", ErrReadOnly, cmd.Name)
	}
	if err != nil && c.err == nil {
		c.err = err
	}
	return err
}

// grow makes room for n more entries, c.mu held. Beyond the first entry it
// allocates room for 8, then doubles.
func (c *Collector) grow(n int) {
	if len(c.entries)+n <= cap(c.entries) {
		return
	}
	grown := make([]Entry, len(c.entries), max(len(c.entries)+n, 2*cap(c.entries), 8))
	copy(grown, c.entries)
	c.entries = grown
}

type collectorKey struct{}
type correlationKey struct{}

// collectorContext is the context WithCollector returns. It holds the
// collector and the command in one value, one allocation, which
// CollectorFrom finds with one lookup.
type collectorContext struct {
	context.Context
	col *Collector
	cmd Command
}

// Value returns the collectorContext itself for collectorKey{}, and the
// parent's value for every other key.
func (c *collectorContext) Value(key any) any {
	if key == (collectorKey{}) {
		return c
	}
	return c.Context.Value(key)
}

// String describes the context, as those of package context do.
func (c *collectorContext) String() string {
	return fmt.Sprintf("%v.WithCollector(%s)", c.Context, c.cmd.Name)
}

// WithCollector returns a context whose Emit calls record into c on behalf
// of cmd. The transactional middleware calls it for every command; call it
// directly only to run a handler without the middleware, as test kits do.
func WithCollector(ctx context.Context, c *Collector, cmd Command) context.Context {
	return &collectorContext{Context: ctx, col: c, cmd: cmd}
}

// collectorContextOf returns the innermost collectorContext of ctx.
func collectorContextOf(ctx context.Context) (*collectorContext, bool) {
	cc, ok := ctx.Value(collectorKey{}).(*collectorContext)
	return cc, ok
}

// CollectorFrom returns the collector and command of ctx, if any.
func CollectorFrom(ctx context.Context) (*Collector, Command, bool) {
	cc, ok := collectorContextOf(ctx)
	if !ok || cc.col == nil {
		return nil, Command{}, false
	}
	return cc.col, cc.cmd, true
}

// WithCorrelationID returns a context whose next top-level command uses id
// as its correlation ID, for example the ID of the HTTP request that caused
// it. Without it each top-level command starts a new correlation ID.
func WithCorrelationID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, correlationKey{}, id)
}

// CorrelationID returns the correlation ID of ctx: the current command's, or
// the one set with WithCorrelationID, or "".
func CorrelationID(ctx context.Context) string {
	if cc, ok := collectorContextOf(ctx); ok && cc.cmd.CorrelationID != "" {
		return cc.cmd.CorrelationID
	}
	id, _ := ctx.Value(correlationKey{}).(string)
	return id
}

// Emit records events to be saved to the outbox when the current command's
// transaction commits. It must be called from a handler running under the
// transactional middleware (or with a context from [WithCollector]);
// otherwise it returns [ErrNoTransaction].
//
// Emit validates only what it can see at once (nil events, read-only
// transactions); marshaling happens at commit time. Any error from Emit also
// fails the command, even if the handler ignores it, so an event is never
// dropped while its command commits.
func Emit(ctx context.Context, events ...any) error {
	c, cmd, ok := CollectorFrom(ctx)
	if !ok {
		return ErrNoTransaction
	}
	var invalid error
	for i, ev := range events {
		if isNil(ev) {
			invalid = fmt.Errorf("%w: event %d of %d emitted by command %s", ErrNilEvent, i+1, len(events), cmd.Name)
			break
		}
	}
	trace := traceContext(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.accept(cmd, invalid); err != nil {
		return err
	}
	c.grow(len(events))
	for _, ev := range events {
		c.entries = append(c.entries, Entry{Event: ev, Command: cmd, Trace: trace})
	}
	return nil
}

// EmitMessage records already marshaled messages for topic, to be saved to
// the outbox when the current command's transaction commits, like Emit. It
// is the path for code that produces Watermill messages itself, such as a
// Watermill cqrs.EventBus whose publisher is the outbox (see package
// gormstore). The partition key is taken from the MetadataPartitionKey
// metadata; correlation, causation, command and created-at metadata are
// added when absent, and an empty UUID gets a UUIDv7.
func EmitMessage(ctx context.Context, topic string, msgs ...*message.Message) error {
	c, cmd, ok := CollectorFrom(ctx)
	if !ok {
		return ErrNoTransaction
	}
	var invalid error
	if topic == "" {
		invalid = fmt.Errorf("%w for message emitted by command %s", ErrEmptyTopic, cmd.Name)
	} else {
		for i, m := range msgs {
			if m == nil {
				invalid = fmt.Errorf("%w: message %d of %d emitted by command %s", ErrNilEvent, i+1, len(msgs), cmd.Name)
				break
			}
		}
	}
	trace := traceContext(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.accept(cmd, invalid); err != nil {
		return err
	}
	c.grow(len(msgs))
	for _, m := range msgs {
		c.entries = append(c.entries, Entry{Message: m, Topic: topic, Command: cmd, Trace: trace})
	}
	return nil
}

func isNil(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan, reflect.Interface:
		return rv.IsNil()
	}
	return false
}
