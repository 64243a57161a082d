package outboxtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// Row is one outbox row as a backend's [Harness.Rows] reads it back.
type Row struct {
	// ID is the row's storage order key (the identity id of the native
	// table). Rows of one Save must have ascending IDs in emit order.
	ID int64
	// UUID is the message UUID.
	UUID string
	// Topic is the topic the message is published to.
	Topic string
	// PartitionKey is the ordering key; "" when the record has none.
	PartitionKey string
	// Payload is the message payload exactly as stored.
	Payload []byte
	// Metadata is the stored metadata decoded from JSON; nil or empty when
	// the message had none.
	Metadata map[string]string
	// Attempts counts delivery attempts; 0 for a freshly saved row.
	Attempts int
	// Delivered reports whether the row is marked delivered.
	Delivered bool
	// Failed reports whether the row is parked as failed.
	Failed bool
}

// Harness is one isolated backend under test, built by the function passed
// to [Exercise].
type Harness struct {
	// Store is the backend under test. Required.
	Store outbox.Store
	// DB is the database Store writes to, its table already created. The
	// suite opens its transactions on it with DB.Transaction. Required.
	DB *gorm.DB
	// Rows reads every row of Store's table through db (DB, or a
	// transaction open on it), in ascending ID order. It fails t on error.
	// Required.
	Rows func(t testing.TB, db *gorm.DB) []Row

	// Known differences. A backend that differs from the native table in a
	// way the suite would otherwise report declares it here; each flag
	// changes only the checks its comment names.

	// PartitionKeyInMetadata declares a backend without a partition key
	// column (the watermill-sql/v3 backend, whose rows only hold a message):
	// Save keeps a record's non-empty partition key as the
	// outbox.MetadataPartitionKey entry of the stored metadata, and Rows
	// reports it from there. The suite then expects that entry in
	// Row.Metadata on top of the record's own metadata, instead of the
	// metadata unchanged.
	PartitionKeyInMetadata bool
}

// Exercise runs the conformance suite against the backend that newHarness
// builds. newHarness is called once per sub-test, from that sub-test, and
// must return a backend on a database no other test uses; sub-tests run in
// parallel. Exercise does not call t.Parallel itself.
//
// The suite checks, by reading the table back:
//   - Save writes exactly the records given, in emit order, with UUID,
//     topic, partition key, payload (byte-exact, including binary and empty
//     payloads) and metadata intact, not delivered, not failed, 0 attempts;
//   - Save of no records is a no-op;
//   - Save of more records than one statement holds (2,500) writes them all;
//   - Save outside a transaction (a plain *gorm.DB) fails and writes nothing;
//   - a rolled-back transaction leaves no rows;
//   - a duplicate message UUID fails the Save, within one Save and across
//     committed transactions;
//   - concurrent Saves in separate transactions all land, each in its own
//     emit order.
//
// A backend that differs from the native table in a known way says so with
// the flags at the end of [Harness], each of which names the checks it
// changes; nothing else is relaxed.
func Exercise(t *testing.T, newHarness func(t *testing.T) Harness) {
	t.Helper()

	setup := func(t *testing.T) Harness {
		t.Helper()
		h := newHarness(t)
		require.NotNil(t, h.Store, "outboxtest: Harness.Store is required")
		require.NotNil(t, h.DB, "outboxtest: Harness.DB is required")
		require.NotNil(t, h.Rows, "outboxtest: Harness.Rows is required")
		require.Empty(t, h.Rows(t, h.DB), "outboxtest: the harness must start with an empty table")
		return h
	}

	t.Run("SaveWritesRecords", func(t *testing.T) {
		t.Parallel()
		h := setup(t)
		ctx := context.Background()

		binary := make([]byte, 256)
		for i := range binary {
			binary[i] = byte(i) // every byte value, including 0x00 and invalid UTF-8
		}
		recs := []outbox.Record{
			newRecord("orders.placed", "order-1", []byte(`{"id":"order-1","total":42}`), map[string]string{
				"name": "OrderPlaced", "correlation_id": "c-1",
			}),
			newRecord("blobs", "", binary, map[string]string{
				"quotes":  `"double" 'single' \back\slash`,
				"unicode": "żółw 🐢 日本",
				"newline": "a\nb\tc",
				"empty":   "",
			}),
			newRecord("empty.payload", "order-1", []byte{}, map[string]string{"name": "Empty"}),
			newRecord("nil.payload", "k", nil, nil),
			newRecord("orders.placed", "order-2", []byte("plain text, not JSON"), map[string]string{"name": "OrderPlaced"}),
		}
		require.NoError(t, h.DB.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			return h.Store.Save(ctx, tx, recs)
		}))
		requireRows(t, h, recs, h.Rows(t, h.DB))
	})

	t.Run("SaveNoRecords", func(t *testing.T) {
		t.Parallel()
		h := setup(t)
		ctx := context.Background()
		require.NoError(t, h.DB.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			if err := h.Store.Save(ctx, tx, nil); err != nil {
				return fmt.Errorf("nil records: %w", err)
			}
			if err := h.Store.Save(ctx, tx, []outbox.Record{}); err != nil {
				return fmt.Errorf("empty records: %w", err)
			}
			return nil
		}))
		require.Empty(t, h.Rows(t, h.DB))
	})

	t.Run("SaveManyRecords", func(t *testing.T) {
		t.Parallel()
		h := setup(t)
		ctx := context.Background()
		recs := make([]outbox.Record, 2500) // more than one 1,000-row statement
		for i := range recs {
			recs[i] = newRecord(fmt.Sprintf("topic.%d", i%7), fmt.Sprintf("key-%d", i%13),
				[]byte(fmt.Sprintf(`{"n":%d}`, i)), map[string]string{"n": fmt.Sprint(i)})
		}
		require.NoError(t, h.DB.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			return h.Store.Save(ctx, tx, recs)
		}))
		requireRows(t, h, recs, h.Rows(t, h.DB))
	})

	t.Run("SaveOutsideTransaction", func(t *testing.T) {
		t.Parallel()
		h := setup(t)
		ctx := context.Background()
		err := h.Store.Save(ctx, h.DB.WithContext(ctx), []outbox.Record{
			newRecord("t", "", []byte("x"), nil),
		})
		require.Error(t, err, "Save on a plain *gorm.DB must fail: the records would not commit with the command")
		require.Empty(t, h.Rows(t, h.DB))
	})

	t.Run("RollbackLeavesNoRows", func(t *testing.T) {
		t.Parallel()
		h := setup(t)
		ctx := context.Background()
		recs := []outbox.Record{
			newRecord("a", "k", []byte("1"), nil),
			newRecord("b", "k", []byte("2"), nil),
		}
		errRollback := errors.New("outboxtest: roll back")
		err := h.DB.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			if err := h.Store.Save(ctx, tx, recs); err != nil {
				return err
			}
			// The rows are written through the transaction...
			require.Len(t, h.Rows(t, tx), len(recs), "Save must write through the transaction it is given")
			return errRollback
		})
		require.ErrorIs(t, err, errRollback)
		// ...and leave with it.
		require.Empty(t, h.Rows(t, h.DB))
	})

	t.Run("DuplicateUUIDInOneSave", func(t *testing.T) {
		t.Parallel()
		h := setup(t)
		ctx := context.Background()
		a := newRecord("a", "", []byte("1"), nil)
		b := newRecord("b", "", []byte("2"), nil)
		b.Message.UUID = a.Message.UUID
		err := h.DB.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			return h.Store.Save(ctx, tx, []outbox.Record{a, b})
		})
		require.Error(t, err, "two records with one UUID must fail the Save")
		require.Empty(t, h.Rows(t, h.DB))
	})

	t.Run("DuplicateUUIDAcrossTransactions", func(t *testing.T) {
		t.Parallel()
		h := setup(t)
		ctx := context.Background()
		first := newRecord("first", "", []byte("1"), nil)
		require.NoError(t, h.DB.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			return h.Store.Save(ctx, tx, []outbox.Record{first})
		}))
		again := newRecord("again", "", []byte("2"), nil)
		again.Message.UUID = first.Message.UUID
		other := newRecord("other", "", []byte("3"), nil)
		err := h.DB.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			return h.Store.Save(ctx, tx, []outbox.Record{other, again})
		})
		require.Error(t, err, "a UUID already in the table must fail the Save")
		// Neither the duplicate nor its transaction's other record is there.
		requireRows(t, h, []outbox.Record{first}, h.Rows(t, h.DB))
	})

	t.Run("ConcurrentSaves", func(t *testing.T) {
		t.Parallel()
		h := setup(t)
		ctx := context.Background()
		const workers, perWorker = 8, 50
		batches := make([][]outbox.Record, workers)
		for w := range batches {
			for i := range perWorker {
				batches[w] = append(batches[w], newRecord(fmt.Sprintf("w%d", w), fmt.Sprintf("w%d", w),
					[]byte(fmt.Sprintf("%d/%d", w, i)), map[string]string{"w": fmt.Sprint(w), "i": fmt.Sprint(i)}))
			}
		}
		var wg sync.WaitGroup
		errs := make([]error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[w] = h.DB.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
					return h.Store.Save(ctx, tx, batches[w])
				})
			}()
		}
		wg.Wait()
		for w, err := range errs {
			require.NoError(t, err, "worker %d", w)
		}

		rows := h.Rows(t, h.DB)
		require.Len(t, rows, workers*perWorker)
		byUUID := make(map[string]Row, len(rows))
		for _, r := range rows {
			_, dup := byUUID[r.UUID]
			require.False(t, dup, "UUID %s stored twice", r.UUID)
			byUUID[r.UUID] = r
		}
		for w, batch := range batches {
			var got []Row
			for _, rec := range batch {
				r, ok := byUUID[rec.Message.UUID]
				require.True(t, ok, "worker %d: record %s missing", w, rec.Message.UUID)
				got = append(got, r)
			}
			requireRows(t, h, batch, got)
		}
	})
}

// newRecord returns a record with a fresh UUIDv7.
func newRecord(topic, key string, payload []byte, md map[string]string) outbox.Record {
	msg := message.NewMessage(outbox.NewUUID(), payload)
	msg.Metadata = md
	return outbox.Record{Topic: topic, PartitionKey: key, Message: msg}
}

// requireRows checks that rows are exactly recs, in order, freshly saved.
func requireRows(t *testing.T, h Harness, recs []outbox.Record, rows []Row) {
	t.Helper()
	require.Len(t, rows, len(recs))
	for i, rec := range recs {
		r := rows[i]
		if i > 0 {
			require.Greater(t, r.ID, rows[i-1].ID, "row %d: rows must be stored in emit order (ascending id)", i)
		}
		require.Equal(t, rec.Message.UUID, r.UUID, "row %d: uuid", i)
		require.Equal(t, rec.Topic, r.Topic, "row %d: topic", i)
		require.Equal(t, rec.PartitionKey, r.PartitionKey, "row %d: partition key", i)
		require.Equal(t, nonNil(rec.Message.Payload), nonNil(r.Payload), "row %d: payload must be byte-exact", i)
		wantMD := map[string]string(rec.Message.Metadata)
		if h.PartitionKeyInMetadata && rec.PartitionKey != "" {
			wantMD = make(map[string]string, len(rec.Message.Metadata)+1)
			for k, v := range rec.Message.Metadata {
				wantMD[k] = v
			}
			wantMD[outbox.MetadataPartitionKey] = rec.PartitionKey
		}
		if len(wantMD) == 0 {
			require.Empty(t, r.Metadata, "row %d: metadata", i)
		} else {
			require.Equal(t, wantMD, r.Metadata, "row %d: metadata", i)
		}
		require.Zero(t, r.Attempts, "row %d: attempts", i)
		require.False(t, r.Delivered, "row %d: a saved row is not delivered", i)
		require.False(t, r.Failed, "row %d: a saved row is not failed", i)
	}
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
