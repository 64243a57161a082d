package handlers_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/outbox"
)

type OrderPlaced struct {
	OrderID string `json:"order_id"`
	Amount  int    `json:"amount"`
}

type OrderCancelled struct {
	OrderID string `json:"order_id"`
}

// encode returns the message the outbox encoder makes of ev.
func encode(t *testing.T, enc *outbox.Encoder, ev any) *message.Message {
	t.Helper()
	rec, err := enc.Encode(outbox.Entry{Event: ev})
	require.NoError(t, err)
	return rec.Message
}

func TestRegistryDecodesWhatTheEncoderWrites(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	reg := handlers.NewRegistry(handlers.RegistryConfig{Marshaler: enc.Marshaler()})
	require.NoError(t, handlers.RegisterEvent[OrderPlaced](reg))
	require.NoError(t, handlers.RegisterEvent[*OrderCancelled](reg))
	require.Equal(t, []string{"OrderCancelled", "OrderPlaced"}, reg.Names())

	v, err := reg.Decode(encode(t, enc, OrderPlaced{OrderID: "o-1", Amount: 3}))
	require.NoError(t, err)
	require.Equal(t, OrderPlaced{OrderID: "o-1", Amount: 3}, v, "a value of exactly the registered type")

	// A pointer registration decodes into a new pointer, whatever form the
	// producer emitted.
	v, err = reg.Decode(encode(t, enc, OrderCancelled{OrderID: "o-2"}))
	require.NoError(t, err)
	require.Equal(t, &OrderCancelled{OrderID: "o-2"}, v)

	placed, err := handlers.DecodeAs[OrderPlaced](reg, encode(t, enc, &OrderPlaced{OrderID: "o-3"}))
	require.NoError(t, err)
	require.Equal(t, OrderPlaced{OrderID: "o-3"}, placed)

	_, err = handlers.DecodeAs[OrderPlaced](reg, encode(t, enc, OrderCancelled{OrderID: "o-4"}))
	require.ErrorIs(t, err, handlers.ErrWrongEvent)
	require.ErrorContains(t, err, "carries *handlers_test.OrderCancelled, not handlers_test.OrderPlaced")
}

func TestRegistryDefaultMarshalerMatchesTheEncoderDefault(t *testing.T) {
	t.Parallel()
	reg := handlers.NewRegistry(handlers.RegistryConfig{})
	require.NoError(t, handlers.RegisterEvent[OrderPlaced](reg))
	msg := encode(t, outbox.NewEncoder(outbox.EncoderConfig{}), OrderPlaced{OrderID: "o-1"})
	v, err := handlers.DecodeAs[OrderPlaced](reg, msg)
	require.NoError(t, err)
	require.Equal(t, "o-1", v.OrderID)
	require.Equal(t, cqrs.StructName(OrderPlaced{}), reg.Names()[0])
}

func TestRegistryCustomNames(t *testing.T) {
	t.Parallel()
	m := cqrs.JSONMarshaler{GenerateName: cqrs.FullyQualifiedStructName}
	enc := outbox.NewEncoder(outbox.EncoderConfig{Marshaler: m})
	reg := handlers.NewRegistry(handlers.RegistryConfig{Marshaler: m})
	require.NoError(t, handlers.RegisterEvent[OrderPlaced](reg))
	require.Equal(t, []string{"handlers_test.OrderPlaced"}, reg.Names())
	_, err := reg.Decode(encode(t, enc, OrderPlaced{}))
	require.NoError(t, err)
}

func TestRegistryRegistrationErrors(t *testing.T) {
	t.Parallel()
	reg := handlers.NewRegistry(handlers.RegistryConfig{})
	require.NoError(t, handlers.RegisterEvent[OrderPlaced](reg))

	err := handlers.RegisterEvent[OrderPlaced](reg)
	require.ErrorIs(t, err, handlers.ErrDuplicateEvent)
	require.EqualError(t, err, `handlers: event already registered: name "OrderPlaced" of handlers_test.OrderPlaced is taken by handlers_test.OrderPlaced`)
	require.ErrorIs(t, handlers.RegisterEvent[*OrderPlaced](reg), handlers.ErrDuplicateEvent, "the pointer form has the same name")

	type other struct{}
	namer := handlers.NewRegistry(handlers.RegistryConfig{Marshaler: cqrs.JSONMarshaler{GenerateName: func(any) string { return "Same" }}})
	require.NoError(t, handlers.RegisterEvent[OrderPlaced](namer))
	err = handlers.RegisterEvent[other](namer)
	require.ErrorIs(t, err, handlers.ErrDuplicateEvent, "two types, one name")
	require.ErrorContains(t, err, "taken by handlers_test.OrderPlaced")

	require.ErrorIs(t, handlers.RegisterEvent[fmt.Stringer](reg), handlers.ErrInvalidEvent)
	require.ErrorIs(t, handlers.RegisterEvent[OrderPlaced](nil), handlers.ErrInvalidEvent)
	require.ErrorIs(t, handlers.RegisterEvent[OrderPlaced](&handlers.Registry{}), handlers.ErrInvalidEvent)
	empty := handlers.NewRegistry(handlers.RegistryConfig{Marshaler: cqrs.JSONMarshaler{GenerateName: func(any) string { return "" }}})
	require.ErrorIs(t, handlers.RegisterEvent[OrderPlaced](empty), handlers.ErrInvalidEvent)
}

func TestRegistryUnknownEvent(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	reg := handlers.NewRegistry(handlers.RegistryConfig{})
	msg := encode(t, enc, OrderCancelled{})

	_, err := reg.Decode(msg)
	require.ErrorIs(t, err, handlers.ErrUnknownEvent)
	require.EqualError(t, err, fmt.Sprintf(`handlers: unknown event "OrderCancelled" in message %s (register its type with handlers.RegisterEvent); registered: none`, msg.UUID))

	require.NoError(t, handlers.RegisterEvent[OrderPlaced](reg))
	_, err = reg.Decode(msg)
	require.ErrorContains(t, err, "registered: OrderPlaced")

	noName := message.NewMessage("m-1", []byte(`{}`))
	_, err = reg.Decode(noName)
	require.ErrorIs(t, err, handlers.ErrUnknownEvent)
	require.ErrorContains(t, err, `message m-1 has no event name (metadata "name")`)

	_, err = handlers.DecodeAs[OrderPlaced](reg, msg)
	require.ErrorIs(t, err, handlers.ErrUnknownEvent)
	_, err = reg.Decode(nil)
	require.ErrorIs(t, err, handlers.ErrDecode)
}

type panicMarshaler struct{ cqrs.JSONMarshaler }

func (panicMarshaler) Unmarshal(*message.Message, any) error { panic("boom") }

func TestRegistryDecodeErrors(t *testing.T) {
	t.Parallel()
	reg := handlers.NewRegistry(handlers.RegistryConfig{})
	require.NoError(t, handlers.RegisterEvent[OrderPlaced](reg))
	msg := message.NewMessage("m-1", []byte(`{"amount":"three"}`))
	msg.Metadata.Set(outbox.MetadataName, "OrderPlaced")
	_, err := reg.Decode(msg)
	require.ErrorIs(t, err, handlers.ErrDecode)
	require.ErrorContains(t, err, `handlers: cannot decode event "OrderPlaced" (handlers_test.OrderPlaced) from message m-1: json:`)

	panicky := handlers.NewRegistry(handlers.RegistryConfig{Marshaler: panicMarshaler{cqrs.JSONMarshaler{GenerateName: cqrs.StructName}}})
	require.NoError(t, handlers.RegisterEvent[OrderPlaced](panicky))
	_, err = panicky.Decode(msg)
	require.ErrorIs(t, err, handlers.ErrDecode)
	require.ErrorContains(t, err, "panic: boom")
}

// recordingLogger keeps the Info entries.
func TestRegistryHandlerFunc(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	errHandler := errors.New("handler failed")
	var got []any
	fn := func(msg *message.Message, event any) error {
		got = append(got, event)
		if event.(OrderPlaced).OrderID == "fail" {
			return errHandler
		}
		return nil
	}

	strict := handlers.NewRegistry(handlers.RegistryConfig{})
	require.NoError(t, handlers.RegisterEvent[OrderPlaced](strict))
	h := strict.HandlerFunc(fn)
	require.NoError(t, h(encode(t, enc, OrderPlaced{OrderID: "o-1"})))
	require.Equal(t, []any{OrderPlaced{OrderID: "o-1"}}, got)
	require.Equal(t, errHandler, h(encode(t, enc, OrderPlaced{OrderID: "fail"})))
	require.ErrorIs(t, h(encode(t, enc, OrderCancelled{})), handlers.ErrUnknownEvent, "nacked by default")
	bad := message.NewMessage("m-1", []byte(`not json`))
	bad.Metadata.Set(outbox.MetadataName, "OrderPlaced")
	require.ErrorIs(t, h(bad), handlers.ErrDecode)
	require.Len(t, got, 2)

	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	lenient := handlers.NewRegistry(handlers.RegistryConfig{AckUnknown: true, Logger: logger})
	require.NoError(t, handlers.RegisterEvent[OrderPlaced](lenient))
	h = lenient.HandlerFunc(fn)
	require.NoError(t, h(encode(t, enc, OrderCancelled{})), "acked")
	require.Equal(t, 1, strings.Count(logs.String(), "acked a message with an unknown event"), logs.String())
	require.Contains(t, logs.String(), "event_name=OrderCancelled")
	require.ErrorIs(t, h(bad), handlers.ErrDecode, "only unknown names are acked")
	require.Len(t, got, 2)
}

func TestRegistryConcurrentUse(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	reg := handlers.NewRegistry(handlers.RegistryConfig{})
	require.NoError(t, handlers.RegisterEvent[OrderPlaced](reg))
	msg := encode(t, enc, OrderPlaced{OrderID: "o-1"})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				v, err := handlers.DecodeAs[OrderPlaced](reg, msg)
				if err != nil || v.OrderID != "o-1" {
					t.Errorf("decode: %v %v", v, err)
					return
				}
				_ = handlers.RegisterEvent[OrderCancelled](reg)
				_ = reg.Names()
			}
		})
	}
	wg.Wait()
}
