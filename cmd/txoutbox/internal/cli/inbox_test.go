package cli_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
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
	"gorm.io/gorm"
)

const inboxFailedTable = inboxTable + "_failed"

// inboxListJSON is the output of inbox failed list --json.
type inboxListJSON struct {
	Table  string `json:"table"`
	Failed []struct {
		ID       int64     `json:"id"`
		UUID     string    `json:"uuid"`
		Consumer string    `json:"consumer"`
		Topic    string    `json:"topic"`
		Key      string    `json:"partition_key"`
		Status   string    `json:"status"`
		Attempts int       `json:"attempts"`
		FailedAt time.Time `json:"failed_at"`
		Error    string    `json:"error"`
	} `json:"failed"`
	NextAfter int64 `json:"next_after"`
}

// inboxChangeJSON is the output of inbox failed retry and discard with
// --json.
type inboxChangeJSON struct {
	Table     string   `json:"table"`
	Consumer  string   `json:"consumer"`
	All       bool     `json:"all"`
	Requested int64    `json:"requested"`
	Marked    *int64   `json:"marked"`
	Discarded *int64   `json:"discarded"`
	Unmatched []string `json:"unmatched"`
}

// consumer is an inbox.Consumer of topic "orders" on a GoChannel, running
// until stop or the end of the test.
type consumer struct {
	*inbox.Consumer
	pubsub *gochannel.GoChannel
	stop   func()
}

// startConsumer runs a consumer named name with handler on the inbox of
// db with table (inbox.DefaultTable when empty).
func startConsumer(t *testing.T, db *gorm.DB, table, name string, handler func(*message.Message) error) *consumer {
	t.Helper()
	in, err := inbox.New(db, inbox.Config{Table: table})
	require.NoError(t, err)
	pubsub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 64}, watermill.NopLogger{})
	t.Cleanup(func() { _ = pubsub.Close() })
	c, err := in.NewConsumer(inbox.ConsumerConfig{
		Name: name, Topics: []string{"orders"}, Subscriber: pubsub, Handler: handler,
		RedrivePoll: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var stopped atomic.Bool
	stop := func() {
		if stopped.CompareAndSwap(false, true) {
			cancel()
			require.NoError(t, <-done)
		}
	}
	t.Cleanup(stop)
	<-c.Running() // a GoChannel drops what is published before
	return &consumer{Consumer: c, pubsub: pubsub, stop: stop}
}

// publish publishes a message of partition key key to "orders".
func (c *consumer) publish(t *testing.T, key, payload string) *message.Message {
	t.Helper()
	msg := message.NewMessage(watermill.NewUUID(), []byte(payload))
	msg.Metadata.Set(outbox.MetadataPartitionKey, key)
	require.NoError(t, c.pubsub.Publish("orders", msg))
	return msg
}

// failedStatus returns the status of the failed-table row of uuid, "" when
// there is none.
func failedStatus(t *testing.T, db *gorm.DB, table, uuid string) string {
	t.Helper()
	var status []string
	require.NoError(t, db.Raw(`SELECT status FROM `+table+` WHERE message_uuid = ?`, uuid).Scan(&status).Error)
	if len(status) == 0 {
		return ""
	}
	return status[0]
}

// The CLI lists a consumer's parked message, has the running consumer
// retry it, and discards another.
func TestInboxFailed(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, db *gorm.DB, url string) {
		ok(t, url, "migrate")
		var fixed atomic.Bool
		var applied atomic.Int64
		c := startConsumer(t, db, "", "billing", func(msg *message.Message) error {
			if string(msg.Payload) == "poison" && !fixed.Load() {
				return inbox.Permanent(errors.New("boom"))
			}
			applied.Add(1)
			return nil
		})
		poison := c.publish(t, "k1", "poison")
		other := c.publish(t, "k2", "poison")
		require.Eventually(t, func() bool { return c.Stats().Parked == 2 }, 10*time.Second, 5*time.Millisecond)

		out := ok(t, url, "inbox", "failed", "list")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		require.Len(t, lines, 3, out)
		require.Regexp(t, `^ID\s+CONSUMER\s+UUID\s+TOPIC\s+KEY\s+STATUS\s+ATTEMPTS\s+FAILED AT\s+ERROR$`, lines[0])
		require.Regexp(t, `(?m)^\d+\s+billing\s+`+poison.UUID+`\s+orders\s+k1\s+failed\s+1\s+\S+Z\s+inbox: permanent failure: boom$`, out)
		require.Regexp(t, `(?m)^\d+\s+billing\s+`+other.UUID+`\s+orders\s+k2\s+failed\s+1\s`, out)

		var list inboxListJSON
		okJSON(t, url, &list, "inbox", "failed", "list", "--consumer", "billing")
		require.Equal(t, inboxFailedTable, list.Table)
		require.Len(t, list.Failed, 2)
		if list.Failed[0].UUID != poison.UUID { // keys run concurrently: either may park first
			list.Failed[0], list.Failed[1] = list.Failed[1], list.Failed[0]
		}
		require.Equal(t, poison.UUID, list.Failed[0].UUID)
		require.Equal(t, other.UUID, list.Failed[1].UUID)
		require.Equal(t, "billing", list.Failed[0].Consumer)
		require.Equal(t, "orders", list.Failed[0].Topic)
		require.Equal(t, "k1", list.Failed[0].Key)
		require.Equal(t, "failed", list.Failed[0].Status)
		require.Equal(t, 1, list.Failed[0].Attempts)
		require.WithinDuration(t, time.Now(), list.Failed[0].FailedAt, time.Minute)
		require.Contains(t, list.Failed[0].Error, "boom")
		require.Zero(t, list.NextAfter)

		// Paging.
		okJSON(t, url, &list, "inbox", "failed", "list", "--limit", "1")
		require.Len(t, list.Failed, 1)
		firstUUID := list.Failed[0].UUID
		require.Equal(t, list.Failed[0].ID, list.NextAfter)
		after := list.NextAfter
		list = inboxListJSON{}
		okJSON(t, url, &list, "inbox", "failed", "list", "--after", jsonNumber(after))
		require.Len(t, list.Failed, 1)
		require.NotEqual(t, firstUUID, list.Failed[0].UUID)
		require.Zero(t, list.NextAfter)
		okJSON(t, url, &list, "inbox", "failed", "list", "--consumer", "nobody")
		require.Empty(t, list.Failed)
		require.Equal(t, "no failed messages in txoutbox_inbox_failed\n", ok(t, url, "inbox", "failed", "list", "--consumer", "nobody"))

		out = ok(t, url, "status")
		require.Regexp(t, `(?m)^CONSUMER\s+FAILED\s+HELD\s+RETRY$`, out)
		require.Regexp(t, `(?m)^billing\s+2\s+0\s+0$`, out, "status counts the consumer's failed messages")

		// Bad input: usage errors, nothing changed.
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"inbox", "failed", "retry", poison.UUID}, "--consumer is required"},
			{[]string{"inbox", "failed", "retry", "--consumer", "billing"}, "give message UUIDs or --all, not both or neither"},
			{[]string{"inbox", "failed", "retry", "--consumer", "billing", "--all", poison.UUID}, "give message UUIDs or --all, not both or neither"},
			{[]string{"inbox", "failed", "discard", "--consumer", "billing"}, "requires at least 1 arg"},
			{[]string{"inbox", "failed", "discard", poison.UUID}, "--consumer is required"},
			{[]string{"inbox", "failed", "discard", "--consumer", "billing", "--all"}, "unknown flag: --all"},
			{[]string{"inbox", "failed", "list", "--limit", "0"}, "--limit 0 is out of range"},
			{[]string{"inbox", "failed", "list", "--after", "-1"}, "--after -1 must not be negative"},
			{[]string{"inbox", "failed", "list", "extra"}, `unknown command "extra"`},
			{[]string{"inbox", "failed", "bogus"}, `unknown command "bogus"`},
			{[]string{"inbox", "failed"}, "missing command"},
			{[]string{"inbox"}, "missing command"},
			{[]string{"inbox", "failed", "list", "--inbox-table", "bad name"}, `"bad name" is not a plain SQL identifier`},
		} {
			r := run(t, nil, append([]string{"--database-url", url}, tc.args...)...)
			require.Equal(t, cli.ExitUsage, r.code, "%v: %s", tc.args, r.stderr)
			require.Contains(t, r.stderr, tc.want, tc.args)
			require.Empty(t, r.stdout, tc.args)
		}
		require.EqualValues(t, 2, testdb.Count(t, db, inboxFailedTable, "status = 'failed'"))

		// Retry after the fix: the running consumer processes it.
		fixed.Store(true)
		out = ok(t, url, "inbox", "failed", "retry", "--consumer", "billing", poison.UUID)
		require.Equal(t, "marked 1 failed messages of billing for retry in txoutbox_inbox_failed; "+
			"the running consumer picks them up within its redrive poll (1s by default)\n", out)
		require.Eventually(t, func() bool { return applied.Load() == 1 }, 10*time.Second, 5*time.Millisecond)
		require.Eventually(t, func() bool { return failedStatus(t, db, inboxFailedTable, poison.UUID) == "" }, 10*time.Second, 5*time.Millisecond)

		// Retrying it again, or with the wrong consumer, marks nothing and
		// exits with ExitNotFound.
		r := run(t, nil, "--database-url", url, "inbox", "failed", "retry", "--consumer", "shipping", other.UUID)
		require.Equal(t, cli.ExitNotFound, r.code, r.stderr)
		require.Contains(t, r.stdout, "marked 0 failed messages of shipping")
		require.Equal(t, "txoutbox: UUID "+other.UUID+" matched no failed message of shipping (wrong UUID or consumer, held, or already marked or discarded); nothing was marked\n", r.stderr)
		require.Equal(t, "failed", failedStatus(t, db, inboxFailedTable, other.UUID))

		// Discard the other: gone, never applied; the unknown UUID is named.
		r = run(t, nil, "--database-url", url, "inbox", "failed", "discard", "--consumer", "billing", other.UUID, "no-such-uuid")
		require.Equal(t, cli.ExitNotFound, r.code, r.stderr)
		require.Equal(t, "discarded 1 failed messages of billing from txoutbox_inbox_failed\n", r.stdout)
		require.Contains(t, r.stderr, "1 of 2 UUIDs matched no failed message of billing (wrong UUID or consumer, or already processed or discarded): no-such-uuid; discarded the other 1")
		require.Zero(t, testdb.Count(t, db, inboxFailedTable, ""))
		require.EqualValues(t, 1, applied.Load())

		// With nothing failed, status shows no consumers.
		require.NotContains(t, ok(t, url, "status"), "CONSUMER")
	})
}

// With the consumer stopped, retry only marks: the row stays, status
// retry, until a consumer of that name runs. Held messages are listed,
// counted, and discarded like failed ones. A custom --inbox-table is used
// throughout.
func TestInboxFailedRetryMarks(t *testing.T) {
	t.Parallel()
	const table = "app_seen"
	const failedTable = table + "_failed"
	eachServer(t, func(t *testing.T, db *gorm.DB, url string) {
		ok(t, url, "migrate", "--inbox-table", table)
		long := "boom: " + strings.Repeat("x", 200)
		c := startConsumer(t, db, table, "billing", func(msg *message.Message) error {
			if string(msg.Payload) == "poison" {
				return inbox.Permanent(errors.New(long))
			}
			return nil
		})
		poison := c.publish(t, "k1", "poison")
		require.Eventually(t, func() bool { return c.Stats().Parked == 1 }, 10*time.Second, 5*time.Millisecond)
		held := c.publish(t, "k1", "fine") // after the poison is parked: GoChannel does not keep the order of publishes
		require.Eventually(t, func() bool { return c.Stats().Held == 1 }, 10*time.Second, 5*time.Millisecond)
		c.stop()

		var list inboxListJSON
		okJSON(t, url, &list, "inbox", "failed", "list", "--inbox-table", table)
		require.Equal(t, failedTable, list.Table)
		require.Len(t, list.Failed, 2)
		require.Equal(t, "failed", list.Failed[0].Status)
		require.Equal(t, "inbox: permanent failure: "+long, list.Failed[0].Error, "JSON has the whole error")
		require.Equal(t, held.UUID, list.Failed[1].UUID)
		require.Equal(t, "held", list.Failed[1].Status)
		require.Contains(t, list.Failed[1].Error, poison.UUID)

		out := ok(t, url, "inbox", "failed", "list", "--inbox-table", table)
		require.Contains(t, out, "boom: xxx")
		require.NotContains(t, out, long, "text output cuts the error")
		require.Contains(t, out, "…")

		// show prints one row whole: the whole error, metadata, payload.
		var shown struct {
			Table           string            `json:"table"`
			ID              int64             `json:"id"`
			Consumer        string            `json:"consumer"`
			UUID            string            `json:"uuid"`
			PartitionKey    string            `json:"partition_key"`
			Status          string            `json:"status"`
			Error           string            `json:"error"`
			Metadata        map[string]string `json:"metadata"`
			PayloadSize     int               `json:"payload_size"`
			PayloadEncoding string            `json:"payload_encoding"`
			Payload         string            `json:"payload"`
		}
		okJSON(t, url, &shown, "inbox", "failed", "show", "--inbox-table", table, jsonNumber(list.Failed[0].ID))
		require.Equal(t, failedTable, shown.Table)
		require.Equal(t, list.Failed[0].ID, shown.ID)
		require.Equal(t, "billing", shown.Consumer)
		require.Equal(t, poison.UUID, shown.UUID)
		require.Equal(t, "k1", shown.PartitionKey)
		require.Equal(t, "failed", shown.Status)
		require.Equal(t, "inbox: permanent failure: "+long, shown.Error)
		require.Equal(t, "k1", shown.Metadata["partition_key"])
		require.Equal(t, 6, shown.PayloadSize)
		require.Equal(t, "utf-8", shown.PayloadEncoding)
		require.Equal(t, "poison", shown.Payload)
		out = ok(t, url, "inbox", "failed", "show", "--inbox-table", table, "--consumer", "billing", jsonNumber(list.Failed[1].ID), "--payload")
		require.Contains(t, out, "uuid:           "+held.UUID+"\n")
		require.Contains(t, out, "status:         held\n")
		require.Contains(t, out, "payload:        4 bytes\n")
		require.True(t, strings.HasSuffix(out, "\npayload:\n  fine\n"), out)
		for _, args := range [][]string{{jsonNumber(list.Failed[0].ID), "--consumer", "shipping"}, {"999999"}} {
			r := run(t, nil, append([]string{"--database-url", url, "--inbox-table", table, "inbox", "failed", "show"}, args...)...)
			require.Equal(t, cli.ExitNotFound, r.code, r.stderr)
			require.Empty(t, r.stdout)
			require.Contains(t, r.stderr, "with ID "+args[0]+" in "+failedTable+" (wrong ID or consumer, or already processed or discarded)")
		}

		// The default table does not exist here: a runtime error with a hint.
		r := run(t, nil, "--database-url", url, "inbox", "failed", "list")
		require.Equal(t, cli.ExitFailure, r.code, r.stderr)
		require.Contains(t, r.stderr, "run txoutbox migrate first")

		out = ok(t, url, "status", "--inbox-table", table)
		require.Regexp(t, `(?m)^billing\s+1\s+1\s+0$`, out)

		// A held message is not marked: named, exit code 3, the other marked.
		var marked inboxChangeJSON
		stderr := runJSON(t, url, cli.ExitNotFound, &marked, "inbox", "failed", "retry", "--inbox-table", table, "--consumer", "billing", held.UUID+","+poison.UUID)
		require.Equal(t, inboxChangeJSON{Table: failedTable, Consumer: "billing", Requested: 2, Marked: ptr(1), Unmatched: []string{held.UUID}}, marked)
		require.Contains(t, stderr, "1 of 2 UUIDs matched no failed message of billing (wrong UUID or consumer, held, or already marked or discarded): "+held.UUID+"; marked the other 1\n")
		marked = inboxChangeJSON{}
		runJSON(t, url, cli.ExitOK, &marked, "inbox", "failed", "retry", "--inbox-table", table, "--consumer", "billing", "--all")
		require.Equal(t, inboxChangeJSON{Table: failedTable, Consumer: "billing", All: true, Marked: ptr(0), Unmatched: []string{}}, marked,
			"the shape of retry with UUIDs")
		require.Equal(t, "retry", failedStatus(t, db, failedTable, poison.UUID))
		require.Equal(t, "held", failedStatus(t, db, failedTable, held.UUID), "held messages are not marked; they follow the retried one")

		var st struct {
			Table     string `json:"table"`
			Consumers []struct {
				Consumer string `json:"consumer"`
				Failed   int64  `json:"failed"`
				Held     int64  `json:"held"`
				Retry    int64  `json:"retry"`
			} `json:"consumers"`
		}
		okJSON(t, url, &st, "status", "--inbox-table", table)
		require.Equal(t, outboxTable, st.Table)
		require.Len(t, st.Consumers, 1)
		require.Equal(t, "billing", st.Consumers[0].Consumer)
		require.EqualValues(t, 0, st.Consumers[0].Failed)
		require.EqualValues(t, 1, st.Consumers[0].Held)
		require.EqualValues(t, 1, st.Consumers[0].Retry)

		var res map[string]any
		okJSON(t, url, &res, "inbox", "failed", "discard", "--inbox-table", table, "--consumer", "billing", poison.UUID, held.UUID)
		require.Equal(t, map[string]any{"table": failedTable, "consumer": "billing", "all": false, "requested": 2.0, "discarded": 2.0, "unmatched": []any{}}, res)
		require.Zero(t, testdb.Count(t, db, failedTable, ""))
	})
}

// TestInboxFailedSQLite runs the inbox failed commands on a SQLite file,
// next to a running consumer.
func TestInboxFailedSQLite(t *testing.T) {
	t.Parallel()
	db, path := sqliteDB(t)
	require.True(t, db.Migrator().HasTable(inboxFailedTable), "migrate creates the inbox failed table")
	var fixed atomic.Bool
	var applied atomic.Int64
	c := startConsumer(t, db, "", "billing", func(msg *message.Message) error {
		if !fixed.Load() {
			return inbox.Permanent(errors.New("boom"))
		}
		applied.Add(1)
		return nil
	})
	first := c.publish(t, "k1", "a")
	second := c.publish(t, "k2", "b")
	require.Eventually(t, func() bool { return c.Stats().Parked == 2 }, 10*time.Second, 5*time.Millisecond)

	var list inboxListJSON
	okJSON(t, "file:"+path, &list, "inbox", "failed", "list")
	require.Len(t, list.Failed, 2)
	require.ElementsMatch(t, []string{first.UUID, second.UUID}, []string{list.Failed[0].UUID, list.Failed[1].UUID})
	require.Equal(t, "failed", list.Failed[0].Status)
	require.WithinDuration(t, time.Now(), list.Failed[0].FailedAt, time.Minute)
	require.Regexp(t, `(?m)^billing\s+2\s+0\s+0$`, ok(t, path, "status"))

	fixed.Store(true)
	require.Contains(t, ok(t, "sqlite://"+path, "inbox", "failed", "retry", "--consumer", "billing", first.UUID), "marked 1 failed messages")
	require.Eventually(t, func() bool { return failedStatus(t, db, inboxFailedTable, first.UUID) == "" }, 10*time.Second, 5*time.Millisecond)
	require.EqualValues(t, 1, applied.Load())

	require.Contains(t, ok(t, path, "inbox", "failed", "discard", "--consumer", "billing", second.UUID), "discarded 1 failed messages")
	require.Zero(t, testdb.Count(t, db, inboxFailedTable, ""))
	require.EqualValues(t, 1, applied.Load())
}

// Without the inbox tables, status reports the outbox alone, and its JSON
// has no consumers field (as before the inbox failed table existed).
func TestStatusWithoutInbox(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, db *gorm.DB, url string) {
		ok(t, url, "migrate", "outbox")
		require.False(t, db.Migrator().HasTable(inboxFailedTable))
		require.Equal(t, "outbox txoutbox_outbox: 0 pending, 0 failed, oldest pending -\n", ok(t, url, "status"))
		var st map[string]json.RawMessage
		okJSON(t, url, &st, "status")
		require.NotContains(t, st, "consumers")
		require.Contains(t, st, "table")
		require.Contains(t, st, "topics")
	})
}
