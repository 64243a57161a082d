package gormstore_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"github.com/txoutbox/txoutbox/outbox/outboxtest"
	"gorm.io/gorm"
)

// Rows handed over by another relay land in the table in the order
// given, parked or pending, and behave as the table's own: a parked row
// holds its key's later rows until it is requeued.
func TestInsertRelayRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := migrated(t, testdb.Postgres, gormstore.Config{})
	row := func(id int64, uuid, key string, attempts int) outbox.Row {
		return outbox.Row{ID: id, UUID: uuid, Topic: "t", PartitionKey: key, Payload: []byte("p-" + uuid), Metadata: []byte(`{"name":"E"}`), Attempts: attempts}
	}
	rows := []outbox.Row{row(7, "a1", "a", 3), row(8, "a2", "a", 0), row(9, "b1", "b", 0), row(10, "u1", "", 1)}
	failures := []outbox.Failure{{ID: 7, Park: true, Error: "parked after 3 attempts: rejected"}, {ID: 10, Park: true, Error: "bad"}}
	n, err := s.InsertRelayRows(ctx, rows, failures)
	require.NoError(t, err)
	require.EqualValues(t, 4, n)
	// Again, as after a relay's restart: nothing is written twice.
	n, err = s.InsertRelayRows(ctx, rows, failures)
	require.NoError(t, err)
	require.Zero(t, n)

	parked, err := s.ListFailed(ctx, 0, 10)
	require.NoError(t, err)
	require.Len(t, parked, 2)
	require.Equal(t, "a1", parked[0].UUID)
	require.Equal(t, 3, parked[0].Attempts)
	require.Equal(t, "parked after 3 attempts: rejected", parked[0].LastError)
	require.Equal(t, "u1", parked[1].UUID)
	ev, err := s.GetFailed(ctx, parked[0].ID)
	require.NoError(t, err)
	require.Equal(t, []byte("p-a1"), ev.Payload)
	require.JSONEq(t, `{"name":"E"}`, ev.Metadata)

	stats, err := s.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(2), stats.Pending)
	require.Equal(t, int64(2), stats.Failed)

	// b1 is due; a2 waits behind a1.
	c, err := s.Claim(ctx, outbox.ClaimParams{Limit: 10})
	require.NoError(t, err)
	require.Len(t, c.Rows(), 1)
	require.Equal(t, "b1", c.Rows()[0].UUID)
	require.NoError(t, c.Finish(ctx, []int64{c.Rows()[0].ID}, nil))

	keys, err := s.UndeliveredKeys(ctx, []string{"a", "b", "c"})
	require.NoError(t, err)
	require.Equal(t, []string{"a"}, keys)
	all, err := s.UndeliveredKeys(ctx, nil)
	require.NoError(t, err)
	require.Equal(t, []string{"a"}, all, "unordered rows have no key")
	none, err := s.UndeliveredKeys(ctx, []string{})
	require.NoError(t, err)
	require.Empty(t, none)

	// Requeued, a1 goes first, then a2.
	_, err = s.RequeueIDs(ctx, parked[0].ID)
	require.NoError(t, err)
	c, err = s.Claim(ctx, outbox.ClaimParams{Limit: 10})
	require.NoError(t, err)
	var got []string
	for _, r := range c.Rows() {
		got = append(got, r.UUID)
	}
	require.Equal(t, []string{"a1", "a2"}, got)
	require.Zero(t, c.Rows()[0].Attempts, "a requeued row starts again")
	var delivered []int64
	for _, r := range c.Rows() {
		delivered = append(delivered, r.ID)
	}
	require.NoError(t, c.Finish(ctx, delivered, nil))
	keys, err = s.UndeliveredKeys(ctx, []string{"a", "b"})
	require.NoError(t, err)
	require.Empty(t, keys)
}

func TestInsertRelayRowsNeedsPostgres(t *testing.T) {
	t.Parallel()
	s, _ := migrated(t, testdb.SQLite, gormstore.Config{})
	_, err := s.InsertRelayRows(context.Background(), []outbox.Row{{ID: 1, UUID: "x", Topic: "t"}}, nil)
	require.ErrorIs(t, err, gormstore.ErrUnsupportedDialect)
	require.EqualError(t, err, "gormstore: handing rows over from another relay (the WAL relay) needs PostgreSQL; this store is on sqlite")
	_, err = s.UndeliveredKeys(context.Background(), nil)
	require.ErrorIs(t, err, gormstore.ErrUnsupportedDialect)
}

// relayedStore is a store whose rows come in through InsertRelayRows, as
// the WAL relay hands them over, rather than through Save in a command's
// transaction.
type relayedStore struct {
	*gormstore.Store
}

// Save hands records over as pending rows. It writes outside tx, which
// the relay contract suite only ever commits.
func (s relayedStore) Save(ctx context.Context, _ *gorm.DB, records []outbox.Record) error {
	rows := make([]outbox.Row, len(records))
	for i, r := range records {
		md, err := json.Marshal(map[string]string(r.Message.Metadata))
		if err != nil {
			return err
		}
		rows[i] = outbox.Row{ID: int64(i + 1), UUID: r.Message.UUID, Topic: r.Topic, PartitionKey: r.PartitionKey, Payload: r.Message.Payload, Metadata: md}
	}
	_, err := s.InsertRelayRows(ctx, rows, nil)
	return err
}

// Rows handed over by another relay meet the relay contract of the
// table's own rows: the forwarder relays them as it relays saved ones.
func TestRelayConformanceOfRelayedRows(t *testing.T) {
	t.Parallel()
	outboxtest.ExerciseRelay(t, func(t *testing.T) outboxtest.RelayHarness {
		h := newHarness(t, testdb.Open(t, testdb.Postgres), gormstore.Config{})
		store := h.Store.(*gormstore.Store)
		h.Store = relayedStore{store}
		return outboxtest.RelayHarness{Harness: h, Requeue: store.Requeue, Discard: store.Discard}
	})
}
