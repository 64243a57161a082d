package handlers_test

import (
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/outbox"
)

// ShipmentBooked is an event of another shape than OrderPlaced.
type ShipmentBooked struct {
	ShipmentID string `json:"shipment_id"`
	Carrier    string `json:"carrier"`
}

// withName returns a message carrying payload under the event name name.
func withName(name, payload string) *message.Message {
	msg := message.NewMessage("m-1", []byte(payload))
	msg.Metadata.Set(outbox.MetadataName, name)
	return msg
}

func TestRegistryRejectsAPayloadOfAnotherShape(t *testing.T) {
	t.Parallel()
	reg := handlers.NewRegistry(handlers.RegistryConfig{})
	require.NoError(t, handlers.RegisterEvent[OrderPlaced](reg))

	shipment := encode(t, outbox.NewEncoder(outbox.EncoderConfig{}), ShipmentBooked{ShipmentID: "s-1", Carrier: "dhl"})
	msg := withName("OrderPlaced", string(shipment.Payload))
	_, err := reg.Decode(msg)
	require.ErrorIs(t, err, handlers.ErrDecode)
	require.Contains(t, err.Error(), `"OrderPlaced"`, "names the event")
	require.Contains(t, err.Error(), `unknown field "shipment_id"`, "names the field")
	require.Contains(t, err.Error(), "AllowUnknownFields", "says how to accept it")

	_, err = reg.Decode(withName("OrderPlaced", `{"order_id":"o-1"} {"order_id":"o-2"}`))
	require.ErrorIs(t, err, handlers.ErrDecode)
	require.Contains(t, err.Error(), "data after its JSON value")

	_, err = reg.Decode(withName("OrderPlaced", `{"order_id":"o-1","amount":"ten"}`))
	require.ErrorIs(t, err, handlers.ErrDecode, "a field of the wrong type")

	ev, err := reg.Decode(withName("OrderPlaced", ` {"order_id":"o-1","amount":3} `+"\n"))
	require.NoError(t, err, "white space around the value is fine")
	require.Equal(t, OrderPlaced{OrderID: "o-1", Amount: 3}, ev)
}

func TestRegistryAllowUnknownFields(t *testing.T) {
	t.Parallel()
	reg := handlers.NewRegistry(handlers.RegistryConfig{AllowUnknownFields: true})
	require.NoError(t, handlers.RegisterEvent[OrderPlaced](reg))
	ev, err := reg.Decode(withName("OrderPlaced", `{"order_id":"o-1","amount":3,"currency":"EUR"}`))
	require.NoError(t, err, "a producer one version ahead")
	require.Equal(t, OrderPlaced{OrderID: "o-1", Amount: 3}, ev)
}

// TestRegistryDecompresses decodes messages published compressed
// (ForwarderConfig.PublishCompressed), with the built-in compressors and a
// custom one, without changing the message.
func TestRegistryDecompresses(t *testing.T) {
	t.Parallel()
	reg := handlers.NewRegistry(handlers.RegistryConfig{Compressors: []outbox.Compressor{renamed{outbox.Gzip(1)}}})
	require.NoError(t, handlers.RegisterEvent[OrderPlaced](reg))
	want := OrderPlaced{OrderID: strings.Repeat("o", 3000), Amount: 7}
	for _, c := range []outbox.Compressor{outbox.Gzip(-1), outbox.Zstd(), renamed{outbox.Gzip(1)}} {
		msg := encode(t, outbox.NewEncoder(outbox.EncoderConfig{Compressor: c}), want)
		require.Equal(t, c.Encoding(), msg.Metadata.Get(outbox.MetadataContentEncoding))
		stored := string(msg.Payload)
		ev, err := reg.Decode(msg)
		require.NoError(t, err, c.Encoding())
		require.Equal(t, want, ev)
		require.Equal(t, stored, string(msg.Payload), "the message is not changed")
	}

	msg := withName("OrderPlaced", "not gzip")
	msg.Metadata.Set(outbox.MetadataContentEncoding, "gzip")
	_, err := reg.Decode(msg)
	require.ErrorIs(t, err, handlers.ErrDecode)
	require.ErrorIs(t, err, outbox.ErrDecompress)
}

// renamed is a custom Compressor: gzip under another name.
type renamed struct{ outbox.Compressor }

func (renamed) Encoding() string { return "x-custom" }
