package outbox

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/internal/typename"
)

// Metadata keys set on every outgoing message.
const (
	// MetadataName holds the event name; it is the key Watermill's cqrs
	// marshalers use, so cqrs event processors recognise the messages.
	MetadataName = "name"
	// MetadataCorrelationID holds the correlation ID shared by a chain of
	// commands and events; it is the key Watermill's CorrelationID
	// middleware uses.
	MetadataCorrelationID = "correlation_id"
	// MetadataCausationID holds the ID of the command that emitted the event.
	MetadataCausationID = "causation_id"
	// MetadataCommand holds the name of the command that emitted the event.
	MetadataCommand = "command"
	// MetadataCreatedAt holds the emit time in RFC 3339 with nanoseconds.
	MetadataCreatedAt = "created_at"
	// MetadataPartitionKey holds the partition key when it is not empty.
	MetadataPartitionKey = "partition_key"
)

// DefaultMaxPayloadBytes is the default EncoderConfig.MaxPayloadBytes: 1 MiB.
const DefaultMaxPayloadBytes = 1 << 20

// Record is an encoded event, ready to be written to the outbox.
type Record struct {
	// Topic is the topic the event is published to.
	Topic string
	// PartitionKey orders events: those with the same non-empty key are
	// relayed in commit order.
	PartitionKey string
	// Message carries the UUID, payload and metadata.
	Message *message.Message
}

// EncoderConfig configures an [Encoder]. The zero value is valid.
type EncoderConfig struct {
	// Marshaler encodes events. Optional; default:
	// cqrs.JSONMarshaler{GenerateName: cqrs.StructName} with UUIDv7 message IDs.
	// A marshaler that leaves the message UUID empty gets a UUIDv7.
	Marshaler cqrs.CommandEventMarshaler
	// Topic returns the topic for an event that has no Topic() string method.
	// Optional; default: the event name.
	Topic func(eventName string, event any) string
	// PartitionKey returns the partition key for an event that has no
	// PartitionKey() string method. Optional; default: "" (unordered).
	PartitionKey func(event any) string
	// MaxPayloadBytes rejects events whose marshaled payload is larger.
	// Optional; 0 means DefaultMaxPayloadBytes (1 MiB), a negative value
	// means no limit.
	MaxPayloadBytes int
	// Now returns the emit time for MetadataCreatedAt. Optional; default:
	// time.Now.
	Now func() time.Time
	// Compressor compresses payloads of at least CompressMinBytes before
	// they are stored: Gzip(level), Zstd(), or a Compressor of your own.
	// A compressed row carries MetadataContentEncoding; a payload that
	// does not get smaller is stored plain. The forwarder publishes the
	// original bytes (ForwarderConfig.PublishCompressed publishes the
	// compressed ones), and rows stored before compression was turned on,
	// or after it is turned off, relay as they are. MaxPayloadBytes applies
	// to the payload before compression. Messages given to EmitMessage are
	// compressed too (their payload is replaced), unless they carry
	// MetadataContentEncoding already. Optional; default nil: no
	// compression.
	Compressor Compressor
	// CompressMinBytes is the smallest payload the Compressor compresses.
	// Optional; 0 means DefaultCompressMinBytes (1 KiB).
	CompressMinBytes int
}

// Encoder turns emitted events into records. It is safe for concurrent use.
type Encoder struct {
	cfg EncoderConfig
	// defaultJSON is set when cfg.Marshaler is the default one, which
	// Encode runs itself (see marshal).
	defaultJSON bool
}

// NewEncoder returns an encoder for cfg with defaults filled in. Every
// EncoderConfig is valid.
func NewEncoder(cfg EncoderConfig) *Encoder {
	defaultJSON := cfg.Marshaler == nil
	if defaultJSON {
		cfg.Marshaler = cqrs.JSONMarshaler{NewUUID: NewUUID, GenerateName: cqrs.StructName}
	}
	if cfg.MaxPayloadBytes == 0 {
		cfg.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CompressMinBytes <= 0 {
		cfg.CompressMinBytes = DefaultCompressMinBytes
	}
	return &Encoder{cfg: cfg, defaultJSON: defaultJSON}
}

// Marshaler returns the marshaler the encoder uses, so consumers can decode
// with the same one.
func (e *Encoder) Marshaler() cqrs.CommandEventMarshaler { return e.cfg.Marshaler }

type topicer interface{ Topic() string }
type partitionKeyer interface{ PartitionKey() string }

// Encode turns one entry into a record. It fails with ErrNilEvent,
// ErrMarshal, ErrEmptyTopic or ErrPayloadTooLarge.
func (e *Encoder) Encode(entry Entry) (rec Record, err error) {
	if entry.Message != nil {
		return e.encodeMessage(entry)
	}
	ev := entry.Event
	if isNil(ev) {
		return Record{}, fmt.Errorf("%w (command %s)", ErrNilEvent, entry.Command.Name)
	}
	defer func() {
		// A marshaler may panic on values it cannot handle; that is bad
		// input, not a crash.
		if r := recover(); r != nil {
			err = fmt.Errorf("%w %T: panic: %v", ErrMarshal, ev, r)
		}
	}()
	name, msg, err := e.marshal(ev)
	if err != nil {
		return Record{}, fmt.Errorf("%w %T: %w", ErrMarshal, ev, err)
	}
	if msg == nil {
		return Record{}, fmt.Errorf("%w %T: marshaler returned no message", ErrMarshal, ev)
	}
	if max := e.cfg.MaxPayloadBytes; max > 0 && len(msg.Payload) > max {
		return Record{}, fmt.Errorf("%w: event %T is %d bytes, limit is %d (EncoderConfig.MaxPayloadBytes)", ErrPayloadTooLarge, ev, len(msg.Payload), max)
	}

	var topic string
	switch t := ev.(type) {
	case topicer:
		topic = t.Topic()
	default:
		if e.cfg.Topic != nil {
			topic = e.cfg.Topic(name, ev)
		} else {
			topic = name
		}
	}
	if topic == "" {
		return Record{}, fmt.Errorf("%w for event %T", ErrEmptyTopic, ev)
	}
	var key string
	switch k := ev.(type) {
	case partitionKeyer:
		key = k.PartitionKey()
	default:
		if e.cfg.PartitionKey != nil {
			key = e.cfg.PartitionKey(ev)
		}
	}

	if msg.Metadata == nil {
		msg.Metadata = make(message.Metadata)
	}
	if msg.Metadata.Get(MetadataName) == "" {
		msg.Metadata.Set(MetadataName, name)
	}
	if key != "" {
		msg.Metadata.Set(MetadataPartitionKey, key)
	}
	e.stamp(msg, entry, true)
	if err := e.compress(msg); err != nil {
		return Record{}, fmt.Errorf("%w %T: %w", ErrMarshal, ev, err)
	}
	return Record{Topic: topic, PartitionKey: key, Message: msg}, nil
}

// marshal returns the name of ev and its message. The default marshaler,
// cqrs.JSONMarshaler{NewUUID: NewUUID, GenerateName: cqrs.StructName}, is
// run here with the same result (payload, "name" metadata; the UUID is set
// by stamp), without formatting the name twice per event and with
// fewer allocations.
func (e *Encoder) marshal(ev any) (string, *message.Message, error) {
	if !e.defaultJSON {
		name := e.cfg.Marshaler.Name(ev)
		msg, err := e.cfg.Marshaler.Marshal(ev)
		return name, msg, err
	}
	name := typename.StructName(ev)
	payload, err := json.Marshal(ev)
	if err != nil {
		return "", nil, err
	}
	msg := message.NewMessage("", payload)
	msg.Metadata.Set(MetadataName, name)
	return name, msg, nil
}

// encodeMessage turns an EmitMessage entry into a record.
func (e *Encoder) encodeMessage(entry Entry) (Record, error) {
	msg := entry.Message
	if entry.Topic == "" {
		return Record{}, fmt.Errorf("%w for message %s", ErrEmptyTopic, msg.UUID)
	}
	if max := e.cfg.MaxPayloadBytes; max > 0 && len(msg.Payload) > max {
		return Record{}, fmt.Errorf("%w: message %s is %d bytes, limit is %d (EncoderConfig.MaxPayloadBytes)", ErrPayloadTooLarge, msg.UUID, len(msg.Payload), max)
	}
	if msg.Metadata == nil {
		msg.Metadata = make(message.Metadata)
	}
	e.stamp(msg, entry, false)
	if err := e.compress(msg); err != nil {
		return Record{}, fmt.Errorf("%w message %s: %w", ErrMarshal, msg.UUID, err)
	}
	return Record{Topic: entry.Topic, PartitionKey: msg.Metadata.Get(MetadataPartitionKey), Message: msg}, nil
}

// compress compresses msg's payload with the configured Compressor when it
// is large enough, not compressed already (a message the caller compressed
// carries MetadataContentEncoding), and gets smaller.
func (e *Encoder) compress(msg *message.Message) error {
	c := e.cfg.Compressor
	if c == nil || len(msg.Payload) < e.cfg.CompressMinBytes || msg.Metadata.Get(MetadataContentEncoding) != "" {
		return nil
	}
	p, err := c.Compress(msg.Payload)
	if err != nil {
		return fmt.Errorf("compress with %s: %w", c.Encoding(), err)
	}
	if len(p) >= len(msg.Payload) {
		return nil
	}
	msg.Payload = p
	msg.Metadata.Set(MetadataContentEncoding, c.Encoding())
	return nil
}

// stamp sets the UUID when empty and the command and time metadata:
// always for events the encoder marshaled itself, only where absent for
// messages marshaled by the caller.
func (e *Encoder) stamp(msg *message.Message, entry Entry, overwrite bool) {
	cmd := entry.Command
	// A new UUID and the time share one string: one allocation.
	var buf [uuidLen + len(time.RFC3339Nano)]byte
	b := buf[:0]
	newID := msg.UUID == ""
	if newID {
		b = appendUUIDv7(b)
	}
	b = e.cfg.Now().UTC().AppendFormat(b, time.RFC3339Nano)
	created := string(b)
	if newID {
		msg.UUID, created = created[:uuidLen], created[uuidLen:]
	}
	set := func(k, v string) {
		if v != "" && (overwrite || msg.Metadata.Get(k) == "") {
			msg.Metadata.Set(k, v)
		}
	}
	set(MetadataCorrelationID, cmd.CorrelationID)
	set(MetadataCausationID, cmd.ID)
	set(MetadataCommand, cmd.Name)
	set(MetadataCreatedAt, created)
	for k, v := range entry.Trace {
		set(k, v)
	}
}

// EncodeAll encodes entries in order. It stops at the first error, which
// names the failing event's position.
func (e *Encoder) EncodeAll(entries []Entry) ([]Record, error) {
	recs := make([]Record, 0, len(entries))
	for i, en := range entries {
		rec, err := e.Encode(en)
		if err != nil {
			if len(entries) > 1 {
				err = fmt.Errorf("event %d of %d: %w", i+1, len(entries), err)
			}
			return nil, err
		}
		recs = append(recs, rec)
	}
	return recs, nil
}
