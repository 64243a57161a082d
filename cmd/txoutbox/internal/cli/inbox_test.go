package cli_test

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/cmd/txoutbox/internal/cli"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
)

// The CLI lists a consumer's parked message, has the running consumer
// retry it, and discards another.
func TestInboxFailed(t *testing.T) {
	t.Parallel()
	db, url := pgDB(t)
	ok(t, url, "migrate")
	in, err := inbox.New(db, inbox.Config{})
	require.NoError(t, err)
	pubsub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	t.Cleanup(func() { _ = pubsub.Close() })
	var fixed atomic.Bool
	var applied atomic.Int64
	c, err := in.NewConsumer(inbox.ConsumerConfig{
		Name: "billing", Topics: []string{"orders"}, Subscriber: pubsub,
		Handler: func(msg *message.Message) error {
			if string(msg.Payload) == "poison" && !fixed.Load() {
				return inbox.Permanent(errors.New("boom"))
			}
			applied.Add(1)
			return nil
		},
		RedrivePoll: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	<-c.Running()

	poison := message.NewMessage(watermill.NewUUID(), []byte("poison"))
	poison.Metadata.Set(outbox.MetadataPartitionKey, "k1")
	other := message.NewMessage(watermill.NewUUID(), []byte("poison"))
	other.Metadata.Set(outbox.MetadataPartitionKey, "k2")
	require.NoError(t, pubsub.Publish("orders", poison, other))
	require.Eventually(t, func() bool { return c.Stats().Parked == 2 }, 10*time.Second, 5*time.Millisecond)

	out := ok(t, url, "inbox", "failed", "list")
	require.Contains(t, out, poison.UUID)
	require.Contains(t, out, "billing")
	require.Contains(t, out, "boom")
	var list struct {
		Table  string `json:"table"`
		Failed []struct {
			UUID     string `json:"uuid"`
			Consumer string `json:"consumer"`
			Status   string `json:"status"`
			Attempts int    `json:"attempts"`
			Key      string `json:"partition_key"`
		} `json:"failed"`
	}
	okJSON(t, url, &list, "inbox", "failed", "list", "--consumer", "billing")
	require.Equal(t, "txoutbox_inbox_failed", list.Table)
	require.Len(t, list.Failed, 2)
	require.Equal(t, "failed", list.Failed[0].Status)
	require.Equal(t, 1, list.Failed[0].Attempts)
	okJSON(t, url, &list, "inbox", "failed", "list", "--consumer", "nobody")
	require.Empty(t, list.Failed)

	out = ok(t, url, "status")
	require.Regexp(t, `billing\s+2\s+0\s+0`, out, "status counts the consumer's failed messages")

	// Bad input.
	for _, args := range [][]string{
		{"inbox", "failed", "retry", poison.UUID},             // no --consumer
		{"inbox", "failed", "retry", "--consumer", "billing"}, // neither UUIDs nor --all
		{"inbox", "failed", "retry", "--consumer", "billing", "--all", poison.UUID},
		{"inbox", "failed", "discard", "--consumer", "billing"}, // no UUID
		{"inbox", "failed", "discard", poison.UUID},             // no --consumer
		{"inbox", "failed", "list", "--limit", "0"},
	} {
		r := run(t, nil, append([]string{"--database-url", url}, args...)...)
		require.Equal(t, cli.ExitUsage, r.code, "%v: %s", args, r.stderr)
	}

	// Retry after the fix: the running consumer processes it.
	fixed.Store(true)
	out = ok(t, url, "inbox", "failed", "retry", "--consumer", "billing", poison.UUID)
	require.Contains(t, out, "marked 1 failed messages of billing")
	require.Eventually(t, func() bool { return applied.Load() == 1 }, 10*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool {
		return testdb.Count(t, db, "txoutbox_inbox_failed", "message_uuid = ?", poison.UUID) == 0
	}, 10*time.Second, 5*time.Millisecond)

	// Discard the other: gone, never applied.
	out = ok(t, url, "inbox", "failed", "discard", "--consumer", "billing", other.UUID, "no-such-uuid")
	require.Contains(t, out, "discarded 1 failed messages")
	require.Zero(t, testdb.Count(t, db, "txoutbox_inbox_failed", ""))
	require.EqualValues(t, 1, applied.Load())
}
