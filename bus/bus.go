package bus

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
)

// Handler handles one command of any type. It is the shape every middleware
// wraps; handlers written by users are usually [HandlerFunc] values registered
// with [Register].
type Handler func(ctx context.Context, cmd any) error

// HandlerFunc handles commands of type C.
type HandlerFunc[C any] func(ctx context.Context, cmd C) error

// Middleware wraps a handler with behaviour that runs around it. The bus
// wraps each handler once and runs the wrapped handler for every command
// (bus middleware: at the first Dispatch after the handler was registered
// or after [Bus.Use]; per-handler middleware: at [Register]), so work to do
// per command belongs in the Handler a Middleware returns.
type Middleware func(next Handler) Handler

// Sentinel errors returned by the bus. They are wrapped with the command type,
// so compare them with errors.Is.
var (
	// ErrNilCommand is returned by Dispatch for a nil command, including a nil
	// pointer of a command type.
	ErrNilCommand = errors.New("bus: nil command")
	// ErrNoHandler is returned by Dispatch when no handler is registered for
	// the command's type.
	ErrNoHandler = errors.New("bus: no handler registered")
	// ErrDuplicateHandler is returned by Register when the command type
	// already has a handler.
	ErrDuplicateHandler = errors.New("bus: handler already registered")
	// ErrInvalidRegistration is returned by Register for a nil bus, a nil
	// handler, a nil middleware, or an interface command type (which can never
	// be a command's dynamic type).
	ErrInvalidRegistration = errors.New("bus: invalid registration")
)

// Bus dispatches commands to the handler registered for their type.
// The zero value is not usable; create one with [New]. A Bus is safe for
// concurrent use.
type Bus struct {
	mu         sync.RWMutex
	handlers   map[reflect.Type]*route
	middleware []Middleware
	// gen counts the changes of middleware.
	gen uint64
}

// route is a registered handler.
type route struct {
	// handler is wrapped by the handler's own middleware.
	handler Handler
	// chained is handler wrapped by the bus middleware of generation gen.
	chained Handler
	gen     uint64
}

// New returns a bus whose handlers are all wrapped by mw, the first one
// outermost. Nil middleware is ignored.
func New(mw ...Middleware) *Bus {
	b := &Bus{handlers: make(map[reflect.Type]*route)}
	b.Use(mw...)
	return b
}

// Use appends bus middleware. It applies to every later Dispatch, also for
// handlers registered before the call. A nil middleware is ignored.
func (b *Bus) Use(mw ...Middleware) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range mw {
		if m != nil {
			b.middleware = append(b.middleware, m)
		}
	}
	b.gen++
}

// Register registers h as the handler of commands of type C, wrapped by the
// per-handler middleware mw (first one outermost). It fails with
// [ErrDuplicateHandler] if C already has a handler and with
// [ErrInvalidRegistration] if b or h is nil, a middleware is nil, or C is an
// interface type.
func Register[C any](b *Bus, h HandlerFunc[C], mw ...Middleware) error {
	t := reflect.TypeFor[C]()
	if b == nil || b.handlers == nil {
		return fmt.Errorf("%w: nil bus for %s (create one with bus.New)", ErrInvalidRegistration, t)
	}
	if h == nil {
		return fmt.Errorf("%w: nil handler for %s", ErrInvalidRegistration, t)
	}
	if t.Kind() == reflect.Interface {
		return fmt.Errorf("%w: command type %s is an interface; register a concrete type", ErrInvalidRegistration, t)
	}
	for i, m := range mw {
		if m == nil {
			return fmt.Errorf("%w: middleware %d for %s is nil", ErrInvalidRegistration, i, t)
		}
	}
	var handler Handler = func(ctx context.Context, cmd any) error {
		return h(ctx, cmd.(C))
	}
	handler = chain(handler, mw)

	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.handlers[t]; ok {
		return fmt.Errorf("%w for %s", ErrDuplicateHandler, t)
	}
	b.handlers[t] = &route{handler: handler}
	return nil
}

// Dispatch runs the handler registered for cmd's dynamic type through the
// middleware chain and returns its error unchanged. It fails with
// [ErrNilCommand] for a nil command and [ErrNoHandler] for a type without a
// handler.
func (b *Bus) Dispatch(ctx context.Context, cmd any) error {
	if cmd == nil {
		return fmt.Errorf("%w: Dispatch(nil)", ErrNilCommand)
	}
	t := reflect.TypeOf(cmd)
	if isNil(cmd) {
		return fmt.Errorf("%w: nil %s", ErrNilCommand, t)
	}

	b.mu.RLock()
	r, ok := b.handlers[t]
	var h Handler
	var mw []Middleware
	gen := b.gen
	if ok {
		h, mw = r.chained, b.middleware
		if r.gen != gen {
			h = nil
		}
	}
	b.mu.RUnlock()
	if !ok {
		return b.noHandler(t)
	}
	if h == nil {
		// Wrapped outside the lock: middleware is the caller's code.
		h = chain(r.handler, mw)
		b.mu.Lock()
		if b.gen == gen {
			r.chained, r.gen = h, gen
		}
		b.mu.Unlock()
	}
	return h(ctx, cmd)
}

// noHandler builds the ErrNoHandler error, pointing at a handler registered
// for the pointer or value form of the same type when there is one.
func (b *Bus) noHandler(t reflect.Type) error {
	var alt reflect.Type
	if t.Kind() == reflect.Pointer {
		alt = t.Elem()
	} else {
		alt = reflect.PointerTo(t)
	}
	b.mu.RLock()
	_, hasAlt := b.handlers[alt]
	b.mu.RUnlock()
	if hasAlt {
		return fmt.Errorf("%w for %s (a handler is registered for %s; dispatch that form)", ErrNoHandler, t, alt)
	}
	return fmt.Errorf("%w for %s", ErrNoHandler, t)
}

func chain(h Handler, mw []Middleware) Handler {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	return h
}

func isNil(v any) bool {
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan, reflect.Interface:
		return rv.IsNil()
	}
	return false
}
