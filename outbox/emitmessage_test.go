package outbox_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/outbox"
)

func TestEmitMessage(t *testing.T) {
	t.Parallel()
	col := outbox.NewCollector(false)
	cmd := outbox.Command{ID: "cmd-1", Name: "PlaceOrder", CorrelationID: "corr-1"}
	ctx := outbox.WithCollector(context.Background(), col, cmd)

	keyed := message.NewMessage("", []byte(`{"id":1}`))
	keyed.Metadata.Set(outbox.MetadataPartitionKey, "order-1")
	keyed.Metadata.Set(outbox.MetadataCorrelationID, "from-caller")
	plain := message.NewMessage("m-2", []byte(`{}`))
	require.NoError(t, outbox.EmitMessage(ctx, "orders", keyed, plain))

	recs, err := outbox.NewEncoder(outbox.EncoderConfig{}).EncodeAll(col.Entries())
	require.NoError(t, err)
	require.Len(t, recs, 2)
	require.Equal(t, "orders", recs[0].Topic)
	require.Equal(t, "order-1", recs[0].PartitionKey)
	id, err := uuid.Parse(recs[0].Message.UUID)
	require.NoError(t, err, "an empty UUID gets a UUIDv7")
	require.Equal(t, uuid.Version(7), id.Version())
	require.Equal(t, "from-caller", recs[0].Message.Metadata.Get(outbox.MetadataCorrelationID), "caller's metadata is kept")
	require.Equal(t, "cmd-1", recs[0].Message.Metadata.Get(outbox.MetadataCausationID))
	require.Equal(t, "", recs[1].PartitionKey)
	require.Equal(t, "m-2", recs[1].Message.UUID)
	require.Equal(t, "corr-1", recs[1].Message.Metadata.Get(outbox.MetadataCorrelationID))
	require.NotEmpty(t, recs[1].Message.Metadata.Get(outbox.MetadataCreatedAt))
}

func TestEmitMessageBadInput(t *testing.T) {
	t.Parallel()
	require.ErrorIs(t, outbox.EmitMessage(context.Background(), "t", message.NewMessage("x", nil)), outbox.ErrNoTransaction)

	col := outbox.NewCollector(false)
	ctx := outbox.WithCollector(context.Background(), col, outbox.Command{Name: "C"})
	require.ErrorIs(t, outbox.EmitMessage(ctx, "", message.NewMessage("x", nil)), outbox.ErrEmptyTopic)
	require.ErrorIs(t, col.Err(), outbox.ErrEmptyTopic, "the command fails even if the caller ignores the error")

	col = outbox.NewCollector(false)
	ctx = outbox.WithCollector(context.Background(), col, outbox.Command{Name: "C"})
	require.ErrorIs(t, outbox.EmitMessage(ctx, "t", message.NewMessage("x", nil), nil), outbox.ErrNilEvent)
	require.Empty(t, col.Entries(), "nothing recorded from a call with a nil message")

	ro := outbox.NewCollector(true)
	ctx = outbox.WithCollector(context.Background(), ro, outbox.Command{Name: "C"})
	require.ErrorIs(t, outbox.EmitMessage(ctx, "t", message.NewMessage("x", nil)), outbox.ErrReadOnly)

	big := outbox.NewCollector(false)
	ctx = outbox.WithCollector(context.Background(), big, outbox.Command{Name: "C"})
	require.NoError(t, outbox.EmitMessage(ctx, "t", message.NewMessage("x", make([]byte, 11))))
	_, err := outbox.NewEncoder(outbox.EncoderConfig{MaxPayloadBytes: 10}).EncodeAll(big.Entries())
	require.ErrorIs(t, err, outbox.ErrPayloadTooLarge)
}
