package outbox_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/outbox"
)

type encOrderPlaced struct {
	OrderID string `json:"order_id"`
	Total   int    `json:"total"`
}

// encRouted has both optional methods.
type encRouted struct{ Key string }

func (encRouted) Topic() string          { return "orders.encRouted" }
func (r encRouted) PartitionKey() string { return r.Key }

// encRoutedPtr has the optional methods on its pointer only.
type encRoutedPtr struct{ Key string }

func (*encRoutedPtr) Topic() string          { return "orders.ptr" }
func (r *encRoutedPtr) PartitionKey() string { return r.Key }

type encEmptyTopic struct{}

func (encEmptyTopic) Topic() string { return "" }

type encWithFunc struct{ F func() }
type encWithChan struct{ C chan int }

type encBlob struct{ Data string }

var (
	encFixedNow = time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.FixedZone("CET", 3600))
	encCmd      = outbox.Command{ID: "cmd-1", Name: "PlaceOrder", CorrelationID: "corr-1"}
)

func encEntry(ev any) outbox.Entry { return outbox.Entry{Event: ev, Command: encCmd} }

func encClock() time.Time { return encFixedNow }

func TestEncodeDefaults(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{Now: encClock})
	ev := encOrderPlaced{OrderID: "o-1", Total: 42}
	rec, err := enc.Encode(encEntry(ev))
	require.NoError(t, err)

	require.Equal(t, "encOrderPlaced", rec.Topic, "default topic is the event name")
	require.Empty(t, rec.PartitionKey, "default partition key is empty")
	want, err := json.Marshal(ev)
	require.NoError(t, err)
	require.JSONEq(t, `{"order_id":"o-1","total":42}`, string(rec.Message.Payload))
	require.Equal(t, want, []byte(rec.Message.Payload), "default payload is encoding/json")

	id, err := uuid.Parse(rec.Message.UUID)
	require.NoError(t, err)
	require.Equal(t, uuid.Version(7), id.Version())

	require.Equal(t, message.Metadata{
		outbox.MetadataName:          "encOrderPlaced",
		outbox.MetadataCorrelationID: "corr-1",
		outbox.MetadataCausationID:   "cmd-1",
		outbox.MetadataCommand:       "PlaceOrder",
		outbox.MetadataCreatedAt:     "2025-03-04T04:06:07.123456789Z",
	}, rec.Message.Metadata)
	created, err := time.Parse(time.RFC3339Nano, rec.Message.Metadata.Get(outbox.MetadataCreatedAt))
	require.NoError(t, err)
	require.True(t, created.Equal(encFixedNow))

	// The encoder's marshaler decodes what it encoded.
	var back encOrderPlaced
	require.NoError(t, enc.Marshaler().Unmarshal(rec.Message, &back))
	require.Equal(t, ev, back)
	require.Equal(t, "encOrderPlaced", enc.Marshaler().NameFromMessage(rec.Message))

	// A pointer event has the same name and payload.
	rec, err = enc.Encode(encEntry(&ev))
	require.NoError(t, err)
	require.Equal(t, "encOrderPlaced", rec.Topic)
	require.Equal(t, want, []byte(rec.Message.Payload))
}

func TestEncodeCreatedAtDefaultClock(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	before := time.Now()
	rec, err := enc.Encode(encEntry(encOrderPlaced{}))
	require.NoError(t, err)
	after := time.Now()
	raw := rec.Message.Metadata.Get(outbox.MetadataCreatedAt)
	require.True(t, strings.HasSuffix(raw, "Z"), "created_at is UTC: %s", raw)
	created, err := time.Parse(time.RFC3339Nano, raw)
	require.NoError(t, err)
	require.False(t, created.Before(before.Truncate(time.Nanosecond)) || created.After(after), "created_at %v not within [%v, %v]", created, before, after)
}

func TestEncodeWithoutCommand(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{Now: encClock})
	rec, err := enc.Encode(outbox.Entry{Event: encOrderPlaced{}})
	require.NoError(t, err)
	require.Equal(t, message.Metadata{
		outbox.MetadataName:      "encOrderPlaced",
		outbox.MetadataCreatedAt: "2025-03-04T04:06:07.123456789Z",
	}, rec.Message.Metadata, "empty command fields are not written")
}

func TestEncodeUUIDs(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	var ids []string
	for range 1000 {
		rec, err := enc.Encode(encEntry(encOrderPlaced{}))
		require.NoError(t, err)
		ids = append(ids, rec.Message.UUID)
	}
	require.True(t, slices.IsSorted(ids), "UUIDv7s of one process are time-ordered")
	require.Len(t, slices.Compact(slices.Clone(ids)), len(ids), "UUIDs are unique")

	id, err := uuid.Parse(outbox.NewUUID())
	require.NoError(t, err)
	require.Equal(t, uuid.Version(7), id.Version())
}

func TestEncodeTopicPrecedence(t *testing.T) {
	t.Parallel()
	var gotName string
	var gotEvent any
	cfgTopic := func(name string, ev any) string {
		gotName, gotEvent = name, ev
		return "cfg." + name
	}
	enc := outbox.NewEncoder(outbox.EncoderConfig{Topic: cfgTopic})

	rec, err := enc.Encode(encEntry(encRouted{Key: "k"}))
	require.NoError(t, err)
	require.Equal(t, "orders.encRouted", rec.Topic, "Topic() method wins over EncoderConfig.Topic")
	require.Empty(t, gotName, "EncoderConfig.Topic is not called for an event with a Topic() method")

	rec, err = enc.Encode(encEntry(&encRoutedPtr{}))
	require.NoError(t, err)
	require.Equal(t, "orders.ptr", rec.Topic, "pointer-receiver Topic() on a pointer event")

	ev := encOrderPlaced{OrderID: "o-1"}
	rec, err = enc.Encode(encEntry(ev))
	require.NoError(t, err)
	require.Equal(t, "cfg.encOrderPlaced", rec.Topic, "EncoderConfig.Topic wins over the event name")
	require.Equal(t, "encOrderPlaced", gotName)
	require.Equal(t, ev, gotEvent)

	rec, err = outbox.NewEncoder(outbox.EncoderConfig{}).Encode(encEntry(encRoutedPtr{}))
	require.NoError(t, err)
	require.Equal(t, "encRoutedPtr", rec.Topic, "a value event lacks pointer-receiver methods: the event name is the topic")
}

func TestEncodePartitionKeyPrecedence(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{
		PartitionKey: func(ev any) string {
			if o, ok := ev.(encOrderPlaced); ok {
				return o.OrderID
			}
			return "cfg"
		},
	})

	rec, err := enc.Encode(encEntry(encRouted{Key: "from-method"}))
	require.NoError(t, err)
	require.Equal(t, "from-method", rec.PartitionKey, "PartitionKey() method wins over EncoderConfig.PartitionKey")
	require.Equal(t, "from-method", rec.Message.Metadata.Get(outbox.MetadataPartitionKey))

	rec, err = enc.Encode(encEntry(encOrderPlaced{OrderID: "o-7"}))
	require.NoError(t, err)
	require.Equal(t, "o-7", rec.PartitionKey)
	require.Equal(t, "o-7", rec.Message.Metadata.Get(outbox.MetadataPartitionKey))

	// An empty key, from the method or the config, writes no metadata key.
	for _, ev := range []any{encRouted{Key: ""}, encOrderPlaced{OrderID: ""}} {
		rec, err = enc.Encode(encEntry(ev))
		require.NoError(t, err)
		require.Empty(t, rec.PartitionKey)
		_, ok := rec.Message.Metadata[outbox.MetadataPartitionKey]
		require.False(t, ok, "%T: partition_key only when not empty", ev)
	}

	rec, err = outbox.NewEncoder(outbox.EncoderConfig{}).Encode(encEntry(encOrderPlaced{OrderID: "o-7"}))
	require.NoError(t, err)
	require.Empty(t, rec.PartitionKey, "no method, no config: no key")
	_, ok := rec.Message.Metadata[outbox.MetadataPartitionKey]
	require.False(t, ok)
}

func TestEncodeErrors(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	for _, tc := range []struct {
		name  string
		event any
		want  error
	}{
		{"nil", nil, outbox.ErrNilEvent},
		{"typed nil pointer", (*encOrderPlaced)(nil), outbox.ErrNilEvent},
		{"typed nil pointer with methods", (*encRoutedPtr)(nil), outbox.ErrNilEvent},
		{"nil map", map[string]int(nil), outbox.ErrNilEvent},
		{"func field", encWithFunc{F: func() {}}, outbox.ErrMarshal},
		{"chan field", encWithChan{C: make(chan int)}, outbox.ErrMarshal},
		{"func value", func() {}, outbox.ErrMarshal},
		{"empty topic from method", encEmptyTopic{}, outbox.ErrEmptyTopic},
		{"payload too large", encBlob{Data: strings.Repeat("x", outbox.DefaultMaxPayloadBytes)}, outbox.ErrPayloadTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec, err := enc.Encode(encEntry(tc.event))
			require.ErrorIs(t, err, tc.want)
			require.Nil(t, rec.Message)
		})
	}
}

func TestEncodeEmptyTopicFromConfigOrName(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{Topic: func(string, any) string { return "" }})
	_, err := enc.Encode(encEntry(encOrderPlaced{}))
	require.ErrorIs(t, err, outbox.ErrEmptyTopic)

	enc = outbox.NewEncoder(outbox.EncoderConfig{Marshaler: cqrs.JSONMarshaler{GenerateName: func(any) string { return "" }}})
	_, err = enc.Encode(encEntry(encOrderPlaced{}))
	require.ErrorIs(t, err, outbox.ErrEmptyTopic)
}

func TestEncodeMaxPayloadBytes(t *testing.T) {
	t.Parallel()
	// {"Data":"..."} is 11 bytes of JSON around the string.
	sized := func(n int) encBlob { return encBlob{Data: strings.Repeat("x", n-11)} }

	enc := outbox.NewEncoder(outbox.EncoderConfig{MaxPayloadBytes: 100})
	rec, err := enc.Encode(encEntry(sized(100)))
	require.NoError(t, err, "exactly the limit is accepted")
	require.Len(t, rec.Message.Payload, 100)
	_, err = enc.Encode(encEntry(sized(101)))
	require.ErrorIs(t, err, outbox.ErrPayloadTooLarge)
	require.ErrorContains(t, err, "101 bytes, limit is 100")

	enc = outbox.NewEncoder(outbox.EncoderConfig{}) // 0: DefaultMaxPayloadBytes
	_, err = enc.Encode(encEntry(sized(outbox.DefaultMaxPayloadBytes)))
	require.NoError(t, err)
	_, err = enc.Encode(encEntry(sized(outbox.DefaultMaxPayloadBytes + 1)))
	require.ErrorIs(t, err, outbox.ErrPayloadTooLarge)

	enc = outbox.NewEncoder(outbox.EncoderConfig{MaxPayloadBytes: -1})
	rec, err = enc.Encode(encEntry(sized(3 * outbox.DefaultMaxPayloadBytes)))
	require.NoError(t, err, "a negative limit means unlimited")
	require.Len(t, rec.Message.Payload, 3*outbox.DefaultMaxPayloadBytes)
}

// encFakeMarshaler is a cqrs marshaler whose Marshal is a test function.
type encFakeMarshaler struct {
	cqrs.JSONMarshaler
	marshal func(v any) (*message.Message, error)
	name    func(v any) string
}

func (m encFakeMarshaler) Marshal(v any) (*message.Message, error) { return m.marshal(v) }
func (m encFakeMarshaler) Name(v any) string {
	if m.name != nil {
		return m.name(v)
	}
	return "fake"
}

func TestEncodeCustomMarshaler(t *testing.T) {
	t.Parallel()

	t.Run("empty UUID gets a UUIDv7", func(t *testing.T) {
		t.Parallel()
		enc := outbox.NewEncoder(outbox.EncoderConfig{Marshaler: encFakeMarshaler{marshal: func(any) (*message.Message, error) {
			return &message.Message{Payload: []byte("p")}, nil // no UUID, no metadata
		}}})
		rec, err := enc.Encode(encEntry(encOrderPlaced{}))
		require.NoError(t, err)
		id, err := uuid.Parse(rec.Message.UUID)
		require.NoError(t, err)
		require.Equal(t, uuid.Version(7), id.Version())
		require.Equal(t, "fake", rec.Message.Metadata.Get(outbox.MetadataName))
		require.Equal(t, "fake", rec.Topic)
		require.Equal(t, []byte("p"), []byte(rec.Message.Payload))
	})

	t.Run("UUID and metadata of the marshaler are kept", func(t *testing.T) {
		t.Parallel()
		enc := outbox.NewEncoder(outbox.EncoderConfig{Marshaler: encFakeMarshaler{marshal: func(any) (*message.Message, error) {
			msg := message.NewMessage("my-id", []byte("p"))
			msg.Metadata.Set(outbox.MetadataName, "orders.v1.OrderPlaced")
			msg.Metadata.Set("content-type", "application/x-protobuf")
			return msg, nil
		}}})
		rec, err := enc.Encode(encEntry(encOrderPlaced{}))
		require.NoError(t, err)
		require.Equal(t, "my-id", rec.Message.UUID)
		require.Equal(t, "orders.v1.OrderPlaced", rec.Message.Metadata.Get(outbox.MetadataName))
		require.Equal(t, "application/x-protobuf", rec.Message.Metadata.Get("content-type"))
		require.Equal(t, "cmd-1", rec.Message.Metadata.Get(outbox.MetadataCausationID))
	})

	t.Run("error", func(t *testing.T) {
		t.Parallel()
		boom := errors.New("boom")
		enc := outbox.NewEncoder(outbox.EncoderConfig{Marshaler: encFakeMarshaler{marshal: func(any) (*message.Message, error) {
			return nil, boom
		}}})
		_, err := enc.Encode(encEntry(encOrderPlaced{}))
		require.ErrorIs(t, err, outbox.ErrMarshal)
		require.ErrorIs(t, err, boom)
		require.ErrorContains(t, err, "encOrderPlaced")
	})

	t.Run("nil message", func(t *testing.T) {
		t.Parallel()
		enc := outbox.NewEncoder(outbox.EncoderConfig{Marshaler: encFakeMarshaler{marshal: func(any) (*message.Message, error) {
			return nil, nil
		}}})
		_, err := enc.Encode(encEntry(encOrderPlaced{}))
		require.ErrorIs(t, err, outbox.ErrMarshal)
	})

	t.Run("Marshal panics", func(t *testing.T) {
		t.Parallel()
		enc := outbox.NewEncoder(outbox.EncoderConfig{Marshaler: encFakeMarshaler{marshal: func(any) (*message.Message, error) {
			panic("cannot handle this")
		}}})
		var rec outbox.Record
		var err error
		require.NotPanics(t, func() { rec, err = enc.Encode(encEntry(encOrderPlaced{})) })
		require.ErrorIs(t, err, outbox.ErrMarshal)
		require.ErrorContains(t, err, "cannot handle this")
		require.Nil(t, rec.Message)
	})

	t.Run("Name panics", func(t *testing.T) {
		t.Parallel()
		enc := outbox.NewEncoder(outbox.EncoderConfig{Marshaler: encFakeMarshaler{
			name:    func(any) string { panic("no name") },
			marshal: func(any) (*message.Message, error) { return message.NewMessage("x", nil), nil },
		}})
		var err error
		require.NotPanics(t, func() { _, err = enc.Encode(encEntry(encOrderPlaced{})) })
		require.ErrorIs(t, err, outbox.ErrMarshal)
	})

	t.Run("Marshaler returns the configured one", func(t *testing.T) {
		t.Parallel()
		m := encFakeMarshaler{}
		require.Equal(t, cqrs.CommandEventMarshaler(m), outbox.NewEncoder(outbox.EncoderConfig{Marshaler: m}).Marshaler())
	})
}

func TestEncodeAll(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{})

	recs, err := enc.EncodeAll([]outbox.Entry{encEntry(encOrderPlaced{OrderID: "1"}), encEntry(encRouted{Key: "k"}), encEntry(encOrderPlaced{OrderID: "3"})})
	require.NoError(t, err)
	require.Len(t, recs, 3)
	require.Equal(t, []string{"encOrderPlaced", "orders.encRouted", "encOrderPlaced"}, []string{recs[0].Topic, recs[1].Topic, recs[2].Topic}, "emit order is kept")
	require.JSONEq(t, `{"order_id":"3","total":0}`, string(recs[2].Message.Payload))

	recs, err = enc.EncodeAll(nil)
	require.NoError(t, err)
	require.Empty(t, recs)

	recs, err = enc.EncodeAll([]outbox.Entry{encEntry(encOrderPlaced{}), encEntry(encWithFunc{}), encEntry(nil)})
	require.ErrorIs(t, err, outbox.ErrMarshal)
	require.ErrorContains(t, err, "event 2 of 3")
	require.Nil(t, recs)

	recs, err = enc.EncodeAll([]outbox.Entry{encEntry(encOrderPlaced{}), encEntry(encOrderPlaced{}), encEntry(nil)})
	require.ErrorIs(t, err, outbox.ErrNilEvent)
	require.ErrorContains(t, err, "event 3 of 3")
	require.Nil(t, recs)

	_, err = enc.EncodeAll([]outbox.Entry{encEntry(encEmptyTopic{})})
	require.ErrorIs(t, err, outbox.ErrEmptyTopic)
	require.NotContains(t, err.Error(), "event 1 of 1")
}

func TestEncoderConcurrent(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	const workers, each = 8, 200
	ids := make([][]string, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				rec, err := enc.Encode(encEntry(encOrderPlaced{OrderID: fmt.Sprint(w, "-", i)}))
				if err != nil {
					errs[w] = err
					return
				}
				ids[w] = append(ids[w], rec.Message.UUID)
			}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for w := range workers {
		require.NoError(t, errs[w])
		for _, id := range ids[w] {
			require.False(t, seen[id], "duplicate UUID %s", id)
			seen[id] = true
		}
	}
	require.Len(t, seen, workers*each)
}

// encGeneric is a generic event type: cqrs.StructName names it by the
// part after its last dot.
type encGeneric[T any] struct{ V T }

// encHTML has characters encoding/json escapes for HTML.
type encHTML struct{ S string }

// encCustomJSON marshals itself.
type encCustomJSON struct{ fail bool }

func (e encCustomJSON) MarshalJSON() ([]byte, error) {
	if e.fail {
		return nil, errors.New("custom failure")
	}
	return []byte(`{ "custom" : true }`), nil
}

type encNamedInt int

// encPanicJSON panics when marshaled.
type encPanicJSON struct{}

func (encPanicJSON) MarshalJSON() ([]byte, error) { panic("cannot marshal") }

// The default encoder writes what the cqrs.JSONMarshaler it names as its
// default does: the same topic, key, payload bytes, metadata and errors,
// for every kind of event; only the message UUIDs differ.
func TestEncodeDefaultMatchesCQRSMarshaler(t *testing.T) {
	t.Parallel()
	def := outbox.NewEncoder(outbox.EncoderConfig{Now: encClock})
	explicit := outbox.NewEncoder(outbox.EncoderConfig{Now: encClock, Marshaler: cqrs.JSONMarshaler{NewUUID: outbox.NewUUID, GenerateName: cqrs.StructName}})
	order := encOrderPlaced{OrderID: "o-1", Total: 3}
	for _, ev := range []any{
		order, &order, encRouted{Key: "k"}, &encRoutedPtr{Key: "p"},
		encGeneric[encOrderPlaced]{V: order}, &encGeneric[[]int]{V: []int{1}},
		encHTML{S: "<a href=\"x\">&</a>\u2028"}, encCustomJSON{}, encNamedInt(7),
		map[string]int{"b": 2, "a": 1}, []string{"x"}, "text", 42, 1.5, true,
		encWithFunc{F: func() {}}, encWithChan{C: make(chan int)}, func() {}, encCustomJSON{fail: true}, encPanicJSON{},
	} {
		got, gotErr := def.Encode(encEntry(ev))
		want, wantErr := explicit.Encode(encEntry(ev))
		if wantErr != nil {
			require.Error(t, gotErr, "%T", ev)
			require.Equal(t, wantErr.Error(), gotErr.Error(), "%T", ev)
			require.ErrorIs(t, gotErr, outbox.ErrMarshal, "%T", ev)
			continue
		}
		require.NoError(t, gotErr, "%T", ev)
		require.Equal(t, want.Topic, got.Topic, "%T", ev)
		require.Equal(t, want.PartitionKey, got.PartitionKey, "%T", ev)
		require.Equal(t, []byte(want.Message.Payload), []byte(got.Message.Payload), "%T", ev)
		require.NotEqual(t, want.Message.UUID, got.Message.UUID, "%T", ev)
		require.Equal(t, want.Message.Metadata, got.Message.Metadata, "%T", ev)
		// The message is a full Watermill message: it can be acked.
		require.True(t, got.Message.Ack())
		select {
		case <-got.Message.Acked():
		default:
			t.Fatalf("%T: acked message's Acked channel is open", ev)
		}
	}
}
