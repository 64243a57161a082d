package bench_test

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
)

// received collects the messages a sink received.
type received struct {
	mu   sync.Mutex
	msgs []*message.Message
}

func (r *received) add(m *message.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
}

// encoderMetadataKeys returns the metadata keys the outbox.Encoder sets on
// a benchmarked event.
func encoderMetadataKeys(t *testing.T) []string {
	rec, err := outbox.NewEncoder(outbox.EncoderConfig{}).Encode(outbox.Entry{
		Event:   newOrder(1),
		Command: outbox.Command{ID: "c", Name: commandName, CorrelationID: "c"},
	})
	require.NoError(t, err)
	require.Equal(t, eventTopic, rec.Topic)
	require.Equal(t, eventName, rec.Message.Metadata.Get(outbox.MetadataName))
	return slices.Sorted(maps.Keys(rec.Message.Metadata))
}

// TestFillMatchesEncoder checks that the benchmarks' SQL fill writes what
// the write path writes (same payload, same metadata keys, about 200
// bytes), and that both fills relay to the GoChannel sink as the
// benchmarks expect.
func TestFillMatchesEncoder(t *testing.T) {
	t.Parallel()
	const n = 120
	wantKeys := encoderMetadataKeys(t)

	t.Run("native", func(t *testing.T) {
		t.Parallel()
		db, store := nativeStore(t, gormstore.Config{})
		fillNative(t, db, store.Table(), n)

		var got received
		slogger, _ := newLogs(t)
		s := newSink(t, n, got.add)
		fw, err := outbox.NewForwarder(store, s.pubSub, outbox.ForwarderConfig{Logger: slogger})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		runErr := make(chan error, 1)
		go func() { runErr <- fw.Run(ctx) }()
		s.wait(t, time.Minute)
		cancel()
		require.NoError(t, <-runErr)

		checkMessages(t, got.msgs, wantKeys, true)
		require.Zero(t, testdb.Count(t, db, store.Table(), ""))
	})

	t.Run("watermill-sql-forwarder", func(t *testing.T) {
		t.Parallel()
		db, schema := testdb.OpenPostgres(t)
		sqlDB, err := db.DB()
		require.NoError(t, err)
		_, wlog := newLogs(t)
		fillStock(t, schema, wlog, n)
		require.EqualValues(t, n, testdb.Count(t, db, stockTable, ""))

		var got received
		s := newSink(t, n, got.add)
		fwd := newStockForwarder(t, sqlDB, s.pubSub, wlog)
		runErr := make(chan error, 1)
		go func() { runErr <- fwd.Run(context.Background()) }()
		s.wait(t, time.Minute)
		require.NoError(t, fwd.Close())
		require.NoError(t, <-runErr)

		// Filled by concurrent transactions: no order to check.
		checkMessages(t, got.msgs, wantKeys, false)
	})

	t.Run("mysql-native", func(t *testing.T) {
		t.Parallel()
		db, store := nativeStoreMySQL(t, gormstore.Config{})
		fillNative(t, db, store.Table(), n)

		var got received
		slogger, _ := newLogs(t)
		s := newSink(t, n, got.add)
		fw, err := outbox.NewForwarder(store, s.pubSub, outbox.ForwarderConfig{Logger: slogger})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		runErr := make(chan error, 1)
		go func() { runErr <- fw.Run(ctx) }()
		s.wait(t, time.Minute)
		cancel()
		require.NoError(t, <-runErr)

		checkMessages(t, got.msgs, wantKeys, true)
		require.Zero(t, testdb.Count(t, db, store.Table(), ""))
	})

	t.Run("mysql-watermill-sql-forwarder", func(t *testing.T) {
		t.Parallel()
		db, _ := testdb.OpenMySQL(t)
		sqlDB, err := db.DB()
		require.NoError(t, err)
		_, wlog := newLogs(t)
		// More than one fill transaction.
		fillStockMySQL(t, sqlDB, wlog, stockMySQLFillBatch+n)
		require.EqualValues(t, stockMySQLFillBatch+n, testdb.Count(t, db, stockMySQLTable, ""))

		var got received
		s := newSink(t, stockMySQLFillBatch+n, got.add)
		fwd := newStockForwarderMySQL(t, sqlDB, s.pubSub, wlog)
		runErr := make(chan error, 1)
		go func() { runErr <- fwd.Run(context.Background()) }()
		s.wait(t, time.Minute)
		require.NoError(t, fwd.Close())
		require.NoError(t, <-runErr)

		checkMessages(t, got.msgs, wantKeys, true)
	})
}

// checkMessages checks that msgs are events 1..len(msgs), each once, with
// the encoder's metadata keys, and, when ordered, in order per partition
// key.
func checkMessages(t *testing.T, msgs []*message.Message, wantKeys []string, ordered bool) {
	t.Helper()
	last := map[string]int{}
	seen := map[int]bool{}
	for _, m := range msgs {
		var ev OrderPlaced
		require.NoError(t, json.Unmarshal(m.Payload, &ev))
		var i int
		for _, c := range ev.OrderID[len("order-"):] {
			i = i*10 + int(c-'0')
		}
		want, err := json.Marshal(newOrder(i))
		require.NoError(t, err)
		require.Equal(t, string(want), string(m.Payload), "payload of event %d", i)
		require.InDelta(t, 200, len(m.Payload), 40, "payload size")
		require.Equal(t, wantKeys, slices.Sorted(maps.Keys(m.Metadata)))
		require.Equal(t, ev.CustomerID, m.Metadata.Get(outbox.MetadataPartitionKey))
		if ordered {
			require.Greater(t, i, last[ev.CustomerID], "order of key %s", ev.CustomerID)
			last[ev.CustomerID] = i
		}
		seen[i] = true
	}
	require.Len(t, seen, len(msgs))
}
