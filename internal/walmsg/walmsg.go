package walmsg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/google/uuid"
	"github.com/txoutbox/txoutbox/internal/metajson"
	"github.com/txoutbox/txoutbox/outbox"
)

// Version is the frame version [Encode] writes, the frame's first byte.
const Version = 1

// DefaultPrefix is the default prefix of the logical decoding messages
// that carry frames, for the writer (gormstore's WAL mode) and the relay
// (walrelay).
const DefaultPrefix = "txoutbox"

// flagBinaryUUID marks an event whose UUID is written as 16 bytes.
const flagBinaryUUID = 0x01

// minEventBytes is the size of the smallest event: flags, and a
// zero-length uuid, topic, key, metadata count and payload.
const minEventBytes = 6

// Errors of [Decode]; the errors it returns wrap one of them and say
// where the frame went wrong.
var (
	// ErrUnknownVersion is a frame whose first byte is not a known version.
	ErrUnknownVersion = errors.New("walmsg: unknown frame version")
	// ErrTruncated is a frame that ends inside a field.
	ErrTruncated = errors.New("walmsg: truncated frame")
	// ErrMalformed is a frame that breaks the format in another way: a
	// uvarint longer than 10 bytes, a reserved flag bit set, metadata keys
	// out of order, bytes after the last event.
	ErrMalformed = errors.New("walmsg: malformed frame")
)

// Event is one event of a frame.
type Event struct {
	// UUID is the message UUID.
	UUID string
	// Topic is the topic to publish to.
	Topic string
	// PartitionKey is the ordering key; "" means unordered.
	PartitionKey string
	// Metadata are the message's metadata pairs, in increasing key order.
	Metadata []Pair
	// Payload is the message payload.
	Payload []byte
}

// Pair is one metadata key and its value.
type Pair struct {
	// Key is the metadata key.
	Key string
	// Value is its value.
	Value string
}

// Row returns the event as an outbox row with the given ID and no
// attempts, its metadata as the JSON object of strings the outbox table
// stores (see [outbox.Row]).
func (e *Event) Row(id int64) outbox.Row {
	return outbox.Row{
		ID:           id,
		UUID:         e.UUID,
		Topic:        e.Topic,
		PartitionKey: e.PartitionKey,
		Payload:      e.Payload,
		Metadata:     e.AppendMetadataJSON(nil),
	}
}

// AppendMetadataJSON appends the event's metadata as a JSON object of
// strings with sorted keys, the outbox table's form.
func (e *Event) AppendMetadataJSON(b []byte) []byte {
	n := 2
	for _, p := range e.Metadata {
		n += len(p.Key) + len(p.Value) + 6
	}
	b = slices.Grow(b, n)
	b = append(b, '{')
	for i, p := range e.Metadata {
		if i > 0 {
			b = append(b, ',')
		}
		b = metajson.AppendString(b, p.Key)
		b = append(b, ':')
		b = metajson.AppendString(b, p.Value)
	}
	return append(b, '}')
}

// Encode returns the frame of records, the events of one command: their
// message UUIDs, topics, partition keys, metadata and payloads, in the
// order given. It fails for no records and for a record without a
// message.
func Encode(records []outbox.Record) ([]byte, error) {
	return AppendEncode(nil, records)
}

// AppendEncode appends the frame of records to dst, as [Encode] does.
func AppendEncode(dst []byte, records []outbox.Record) ([]byte, error) {
	if len(records) == 0 {
		return dst, errors.New("walmsg: no records to encode")
	}
	size := 1 + binary.MaxVarintLen64
	for i, r := range records {
		if r.Message == nil {
			return dst, fmt.Errorf("walmsg: record %d has no message", i)
		}
		size += minEventBytes + 16 + len(r.Message.UUID) + len(r.Topic) + len(r.PartitionKey) + len(r.Message.Payload)
		for k, v := range r.Message.Metadata {
			size += 2*binary.MaxVarintLen64 + len(k) + len(v)
		}
	}
	b := slices.Grow(dst, size)
	b = append(b, Version)
	b = binary.AppendUvarint(b, uint64(len(records)))
	var keys []string
	for _, r := range records {
		m := r.Message
		if id, ok := canonicalUUID(m.UUID); ok {
			b = append(b, flagBinaryUUID)
			b = append(b, id[:]...)
		} else {
			b = append(b, 0)
			b = appendString(b, m.UUID)
		}
		b = appendString(b, r.Topic)
		b = appendString(b, r.PartitionKey)
		keys = keys[:0]
		for k := range m.Metadata {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = binary.AppendUvarint(b, uint64(len(keys)))
		for _, k := range keys {
			b = appendString(b, k)
			b = appendString(b, m.Metadata[k])
		}
		b = binary.AppendUvarint(b, uint64(len(m.Payload)))
		b = append(b, m.Payload...)
	}
	return b, nil
}

// canonicalUUID returns the bytes of s when s is a UUID in canonical text
// form (lowercase, 8-4-4-4-12), the form whose bytes turn back into s.
func canonicalUUID(s string) (uuid.UUID, bool) {
	if len(s) != 36 {
		return uuid.UUID{}, false
	}
	id, err := uuid.Parse(s)
	if err != nil || id.String() != s {
		return uuid.UUID{}, false
	}
	return id, true
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Decode reads a frame and returns its events in the order they were
// encoded. It does not keep content: the events' strings and payloads are
// copies, so content may be a buffer that is reused afterwards. An error
// wraps [ErrUnknownVersion], [ErrTruncated] or [ErrMalformed].
func Decode(content []byte) ([]Event, error) {
	if len(content) == 0 {
		return nil, fmt.Errorf("%w: empty content, no version byte", ErrTruncated)
	}
	if content[0] != Version {
		return nil, fmt.Errorf("%w: version %d (this decoder reads version %d)", ErrUnknownVersion, content[0], Version)
	}
	d := decoder{b: content, off: 1, event: -1}
	n, err := d.uvarint("event count")
	if err != nil {
		return nil, err
	}
	if left := uint64(len(content) - d.off); n > left/minEventBytes {
		return nil, fmt.Errorf("%w: %d events cannot fit in the %d bytes left", ErrTruncated, n, left)
	}
	// One copy of the payloads for the whole frame.
	d.payloads = make([]byte, 0, len(content)-d.off)
	events := make([]Event, n)
	for i := range events {
		d.event = i
		if err := d.read(&events[i]); err != nil {
			return nil, err
		}
	}
	if d.off != len(content) {
		return nil, fmt.Errorf("%w: %d bytes after the last event, at offset %d", ErrMalformed, len(content)-d.off, d.off)
	}
	return events, nil
}

// decoder reads a frame; event is the index of the event it reads, -1
// before the first, for errors.
type decoder struct {
	b        []byte
	off      int
	event    int
	payloads []byte
}

func (d *decoder) read(e *Event) error {
	if d.off >= len(d.b) {
		return d.truncated("flags", 1)
	}
	flags := d.b[d.off]
	d.off++
	if flags&^flagBinaryUUID != 0 {
		return fmt.Errorf("%w: event %d: reserved flag bits set (flags %#02x) at offset %d", ErrMalformed, d.event, flags, d.off-1)
	}
	if flags&flagBinaryUUID != 0 {
		if len(d.b)-d.off < 16 {
			return d.truncated("uuid", 16)
		}
		e.UUID = uuid.UUID(d.b[d.off : d.off+16]).String()
		d.off += 16
	} else {
		s, err := d.bytes("uuid")
		if err != nil {
			return err
		}
		e.UUID = string(s)
	}
	s, err := d.bytes("topic")
	if err != nil {
		return err
	}
	e.Topic = string(s)
	if s, err = d.bytes("partition key"); err != nil {
		return err
	}
	e.PartitionKey = string(s)
	n, err := d.uvarint("metadata count")
	if err != nil {
		return err
	}
	if left := uint64(len(d.b) - d.off); n > left/2 {
		return fmt.Errorf("%w: event %d: %d metadata pairs cannot fit in the %d bytes left", ErrTruncated, d.event, n, left)
	}
	if n > 0 {
		e.Metadata = make([]Pair, n)
	}
	var prev []byte
	for i := range e.Metadata {
		k, err := d.bytes("metadata key")
		if err != nil {
			return err
		}
		if i > 0 && bytes.Compare(prev, k) >= 0 {
			return fmt.Errorf("%w: event %d: metadata key %q does not come after %q (keys are distinct, in increasing order)", ErrMalformed, d.event, k, prev)
		}
		prev = k
		v, err := d.bytes("metadata value")
		if err != nil {
			return err
		}
		e.Metadata[i] = Pair{Key: string(k), Value: string(v)}
	}
	p, err := d.bytes("payload")
	if err != nil {
		return err
	}
	start := len(d.payloads)
	d.payloads = append(d.payloads, p...)
	e.Payload = d.payloads[start:len(d.payloads):len(d.payloads)]
	return nil
}

// bytes reads a string field: a uvarint length and that many bytes.
func (d *decoder) bytes(field string) ([]byte, error) {
	n, err := d.uvarint(field)
	if err != nil {
		return nil, err
	}
	if n > uint64(len(d.b)-d.off) {
		return nil, d.truncated(field, n)
	}
	s := d.b[d.off : d.off+int(n)]
	d.off += int(n)
	return s, nil
}

// uvarint reads a uvarint: a count, or the length of a string field.
func (d *decoder) uvarint(field string) (uint64, error) {
	v, n := binary.Uvarint(d.b[d.off:])
	switch {
	case n == 0:
		return 0, d.truncated(field, 1)
	case n < 0:
		return 0, fmt.Errorf("%w: %s%s (or its length) is not a uvarint of at most 10 bytes, at offset %d", ErrMalformed, d.where(), field, d.off)
	}
	d.off += n
	return v, nil
}

func (d *decoder) truncated(field string, need uint64) error {
	return fmt.Errorf("%w: %s%s needs %d bytes at offset %d, %d left", ErrTruncated, d.where(), field, need, d.off, len(d.b)-d.off)
}

// where names the event being read, for errors.
func (d *decoder) where() string {
	if d.event < 0 {
		return ""
	}
	return fmt.Sprintf("event %d: ", d.event)
}
