package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/outbox"
)

// Errors of the [Registry]. They are wrapped with the event name, type or
// message UUID; compare with errors.Is.
var (
	// ErrUnknownEvent is returned for a message whose event name no type is
	// registered for, or that carries no event name.
	ErrUnknownEvent = errors.New("handlers: unknown event")
	// ErrDuplicateEvent is returned by RegisterEvent when the event name is
	// already registered.
	ErrDuplicateEvent = errors.New("handlers: event already registered")
	// ErrInvalidEvent is returned by RegisterEvent for a nil registry, an
	// interface type, or a type the marshaler gives an empty name.
	ErrInvalidEvent = errors.New("handlers: invalid event registration")
	// ErrDecode is returned when a message's payload cannot be decoded into
	// its registered type.
	ErrDecode = errors.New("handlers: cannot decode event")
	// ErrWrongEvent is returned by DecodeAs when the message carries a
	// registered event of another type.
	ErrWrongEvent = errors.New("handlers: message carries another event type")
)

// RegistryConfig configures a [Registry]. The zero value is valid.
type RegistryConfig struct {
	// Marshaler names event types and decodes payloads. It must match the
	// producer's: pass the outbox Encoder's Marshaler(). Optional; default
	// the outbox default, cqrs.JSONMarshaler with cqrs.StructName names.
	Marshaler cqrs.CommandEventMarshaler
	// AckUnknown makes the handler returned by Registry.HandlerFunc ack a
	// message whose event name is not registered, logging it at info level,
	// instead of failing it with ErrUnknownEvent (which nacks it, so the
	// broker redelivers it). Use it for consumers that subscribe to topics
	// carrying events they do not care about. Decode always returns the
	// error. Optional; default false.
	AckUnknown bool
	// Logger receives the acked unknown events, at info level. Optional;
	// default slog.Default().
	Logger *slog.Logger
	// AllowUnknownFields accepts JSON payloads with fields the registered
	// type does not have, for a consumer that must keep working while
	// producers add fields. By default a JSON payload (the default
	// marshaler, cqrs.JSONMarshaler) must match its registered type: a
	// field the type lacks, or data after the JSON value, fails the
	// decode with ErrDecode naming the event and the field, so a payload
	// of another shape never becomes a zero-valued event. Other
	// marshalers decide for themselves. Optional; default false.
	AllowUnknownFields bool
	// Compressors are the custom compressors producers may use
	// (outbox.EncoderConfig.Compressor), in addition to the built-in gzip
	// and zstd: a message with outbox.MetadataContentEncoding (published
	// with ForwarderConfig.PublishCompressed) is decompressed before it is
	// decoded. Optional.
	Compressors []outbox.Compressor
}

// Registry maps event names to Go types: the consumer side's "event map".
// The name of a type is the one the marshaler gives it, the same the
// outbox encoder writes into each message's "name" metadata. The zero value
// is not usable; create one with [NewRegistry]. A Registry is safe for
// concurrent use.
type Registry struct {
	cfg    RegistryConfig
	mu     sync.RWMutex
	byName map[string]reflect.Type
}

// NewRegistry returns an empty registry with cfg's defaults filled in.
func NewRegistry(cfg RegistryConfig) *Registry {
	if cfg.Marshaler == nil {
		cfg.Marshaler = outbox.NewEncoder(outbox.EncoderConfig{}).Marshaler()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Registry{cfg: cfg, byName: make(map[string]reflect.Type)}
}

// Marshaler returns the marshaler the registry names and decodes with.
func (r *Registry) Marshaler() cqrs.CommandEventMarshaler { return r.cfg.Marshaler }

// RegisterEvent registers E under the name the registry's marshaler gives
// it. Messages with that name decode into a new E: a value for a struct
// type, a new pointer for a pointer type (as protobuf messages need). It
// fails with [ErrDuplicateEvent] when the name is taken (also by the pointer
// or value form of the same type) and with [ErrInvalidEvent] for a nil
// registry, an interface type or an empty name.
func RegisterEvent[E any](r *Registry) error {
	t := reflect.TypeFor[E]()
	if r == nil || r.byName == nil {
		return fmt.Errorf("%w: nil registry for %s (create one with handlers.NewRegistry)", ErrInvalidEvent, t)
	}
	if t.Kind() == reflect.Interface {
		return fmt.Errorf("%w: %s is an interface; register a concrete event type", ErrInvalidEvent, t)
	}
	name := r.cfg.Marshaler.Name(newValue(t).Interface())
	if name == "" {
		return fmt.Errorf("%w: the marshaler gives %s an empty name", ErrInvalidEvent, t)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if prev, ok := r.byName[name]; ok {
		return fmt.Errorf("%w: name %q of %s is taken by %s", ErrDuplicateEvent, name, t, prev)
	}
	r.byName[name] = t
	return nil
}

// Names returns the registered event names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.byName))
	for n := range r.byName {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Decode decodes msg into a new value of the type registered for its event
// name and returns it (a value of exactly the registered type, so a type
// switch on it works). It fails with [ErrUnknownEvent] for a name without a
// registered type and with [ErrDecode] for a payload the marshaler rejects.
func (r *Registry) Decode(msg *message.Message) (any, error) {
	if msg == nil {
		return nil, fmt.Errorf("%w: nil message", ErrDecode)
	}
	name := r.cfg.Marshaler.NameFromMessage(msg)
	r.mu.RLock()
	t, ok := r.byName[name]
	r.mu.RUnlock()
	if !ok {
		return nil, r.unknown(name, msg)
	}
	return r.decodeInto(t, name, msg)
}

func (r *Registry) unknown(name string, msg *message.Message) error {
	registered := strings.Join(r.Names(), ", ")
	if registered == "" {
		registered = "none"
	}
	if name == "" {
		return fmt.Errorf("%w: message %s has no event name (metadata %q); registered: %s", ErrUnknownEvent, msg.UUID, outbox.MetadataName, registered)
	}
	return fmt.Errorf("%w %q in message %s (register its type with handlers.RegisterEvent); registered: %s", ErrUnknownEvent, name, msg.UUID, registered)
}

// DecodeAs decodes msg like [Registry.Decode] and returns the event as an E.
// It fails with [ErrWrongEvent] when the message carries a registered event
// of another type.
func DecodeAs[E any](r *Registry, msg *message.Message) (E, error) {
	var zero E
	v, err := r.Decode(msg)
	if err != nil {
		return zero, err
	}
	e, ok := v.(E)
	if !ok {
		return zero, fmt.Errorf("%w: message %s carries %T, not %s", ErrWrongEvent, msg.UUID, v, reflect.TypeFor[E]())
	}
	return e, nil
}

// HandlerFunc returns a Watermill handler that decodes each message with
// the registry and calls fn with the message (its Context carries what the
// middleware put there, such as the inbox transaction) and the decoded
// event. A message with an unregistered event name fails with
// [ErrUnknownEvent] (so it is nacked), or is acked and logged when
// RegistryConfig.AckUnknown is set. A decode error and fn's error are
// returned.
func (r *Registry) HandlerFunc(fn func(msg *message.Message, event any) error) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		ev, err := r.Decode(msg)
		if errors.Is(err, ErrUnknownEvent) && r.cfg.AckUnknown {
			r.cfg.Logger.Info("handlers: acked a message with an unknown event",
				"message_uuid", msg.UUID,
				"event_name", r.cfg.Marshaler.NameFromMessage(msg),
				"handler", message.HandlerNameFromCtx(msg.Context()))
			return nil
		}
		if err != nil {
			return err
		}
		return fn(msg, ev)
	}
}

// newValue returns a new value of t: the zero value for a non-pointer
// type, a pointer to a new zero value for a pointer type.
func newValue(t reflect.Type) reflect.Value {
	if t.Kind() == reflect.Pointer {
		return reflect.New(t.Elem())
	}
	return reflect.New(t).Elem()
}

// decodeInto unmarshals msg into a new value of t and returns it as a t.
func (r *Registry) decodeInto(t reflect.Type, name string, msg *message.Message) (v any, err error) {
	defer func() {
		// A marshaler may panic on input it cannot handle.
		if p := recover(); p != nil {
			v, err = nil, fmt.Errorf("%w %q (%s) from message %s: panic: %v", ErrDecode, name, t, msg.UUID, p)
		}
	}()
	var target reflect.Value // the pointer passed to Unmarshal
	if t.Kind() == reflect.Pointer {
		target = reflect.New(t.Elem())
	} else {
		target = reflect.New(t)
	}
	if err := r.unmarshal(msg, target.Interface()); err != nil {
		return nil, fmt.Errorf("%w %q (%s) from message %s: %w", ErrDecode, name, t, msg.UUID, err)
	}
	if t.Kind() == reflect.Pointer {
		return target.Interface(), nil
	}
	return target.Elem().Interface(), nil
}

// unmarshal decodes msg's payload, decompressed, into v: strictly for the
// JSON marshaler unless AllowUnknownFields, with the marshaler otherwise.
// msg itself is not changed.
func (r *Registry) unmarshal(msg *message.Message, v any) error {
	payload := msg.Payload
	enc := msg.Metadata.Get(outbox.MetadataContentEncoding)
	if enc != "" {
		p, err := outbox.DecompressPayload(enc, msg.Payload, r.cfg.Compressors...)
		if err != nil {
			return err
		}
		payload = p
	}
	if isJSONMarshaler(r.cfg.Marshaler) && !r.cfg.AllowUnknownFields {
		return strictJSON(payload, v)
	}
	if enc == "" {
		return r.cfg.Marshaler.Unmarshal(msg, v)
	}
	plain := message.NewMessage(msg.UUID, payload)
	plain.Metadata = msg.Metadata
	plain.SetContext(msg.Context())
	return r.cfg.Marshaler.Unmarshal(plain, v)
}

func isJSONMarshaler(m cqrs.CommandEventMarshaler) bool {
	switch m.(type) {
	case cqrs.JSONMarshaler, *cqrs.JSONMarshaler:
		return true
	}
	return false
}

// strictJSON decodes one JSON value into v, rejecting fields v's type does
// not have and anything after the value.
func strictJSON(payload []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if strings.HasPrefix(err.Error(), "json: unknown field ") {
			return fmt.Errorf("payload does not match the registered type: %s (set handlers.RegistryConfig.AllowUnknownFields to accept fields the type lacks)", strings.TrimPrefix(err.Error(), "json: "))
		}
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("payload has data after its JSON value")
	}
	return nil
}
