package gormstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"github.com/txoutbox/txoutbox/outbox/outboxtest"
	"gorm.io/gorm"
)

// TestWatermillSQLConformance runs the outbox.Store conformance suite on
// the watermill-sql/v3 backend, on a plain pool and on a PrepareStmt
// session (whose transactions wrap the *sql.Tx in a *gorm.PreparedStmtTX).
// Its one known difference is declared, not hidden: the table has no
// partition key column, so the key travels in the metadata
// (Harness.PartitionKeyInMetadata).
func TestWatermillSQLConformance(t *testing.T) {
	t.Parallel()
	for _, prepare := range []bool{false, true} {
		t.Run(fmt.Sprintf("prepare_stmt=%v", prepare), func(t *testing.T) {
			t.Parallel()
			outboxtest.Exercise(t, func(t *testing.T) outboxtest.Harness {
				db := testdb.Open(t, testdb.Postgres)
				if prepare {
					db = db.Session(&gorm.Session{PrepareStmt: true})
				}
				store, err := gormstore.NewWatermillSQL(db, gormstore.WatermillSQLConfig{})
				require.NoError(t, err)
				require.NoError(t, store.Migrate(context.Background()))
				return outboxtest.Harness{
					Store:                  store,
					DB:                     db,
					Rows:                   envelopeRows(store.Table()),
					PartitionKeyInMetadata: true,
				}
			})
		})
	}
}

// envelope is components/forwarder's envelope (its type is unexported).
type envelope struct {
	DestinationTopic string            `json:"destination_topic"`
	UUID             string            `json:"uuid"`
	Payload          []byte            `json:"payload"`
	Metadata         map[string]string `json:"metadata"`
}

// envelopeRows reads a watermill-sql/v3 messages table and unwraps each
// row's forwarder envelope. The offset is the row ID.
func envelopeRows(table string) func(t testing.TB, db *gorm.DB) []outboxtest.Row {
	return func(t testing.TB, db *gorm.DB) []outboxtest.Row {
		t.Helper()
		rows, err := db.Raw(`SELECT "offset", payload FROM ` + table + ` ORDER BY "offset"`).Rows()
		require.NoError(t, err)
		defer rows.Close()
		var out []outboxtest.Row
		for rows.Next() {
			var id int64
			var payload []byte
			require.NoError(t, rows.Scan(&id, &payload))
			var e envelope
			require.NoError(t, json.Unmarshal(payload, &e), "row %d is not a forwarder envelope: %s", id, payload)
			out = append(out, outboxtest.Row{
				ID:           id,
				UUID:         e.UUID,
				Topic:        e.DestinationTopic,
				PartitionKey: e.Metadata[outbox.MetadataPartitionKey],
				Payload:      e.Payload,
				Metadata:     e.Metadata,
			})
		}
		require.NoError(t, rows.Err())
		return out
	}
}

// Events of the stock forwarder test.
type itemAdded struct {
	Cart string `json:"cart"`
	N    int    `json:"n"`
}

func (e itemAdded) Topic() string        { return "carts" }
func (e itemAdded) PartitionKey() string { return e.Cart }

type auditNoted struct {
	N int `json:"n"`
}

func (auditNoted) Topic() string { return "audit" }

// TestWatermillSQLStockForwarder writes events through the transactional
// middleware into the watermill-sql/v3 table and lets Watermill's stock
// components/forwarder, unmodified, relay them to GoChannel: every
// committed event arrives once per topic in commit order, with its UUID,
// payload and metadata (including the partition key); the events of a
// rolled-back command never arrive.
func TestWatermillSQLStockForwarder(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	db := testdb.Open(t, testdb.Postgres)
	store, err := gormstore.NewWatermillSQL(db, gormstore.WatermillSQLConfig{ForwarderTopic: "events"})
	require.NoError(t, err)
	require.Equal(t, `"watermill_events"`, store.Table())
	require.NoError(t, store.Migrate(ctx))
	require.NoError(t, store.Migrate(ctx), "Migrate is idempotent")
	var want []string // UUIDs of committed events, in commit order
	tm, err := middleware.NewTransactional(middleware.TransactionalConfig{
		DB: db, Store: store,
		AfterCommit: []func(middleware.AfterCommitParams){func(p middleware.AfterCommitParams) {
			for _, r := range p.Records {
				want = append(want, r.Message.UUID)
			}
		}},
	})
	require.NoError(t, err)

	const commands = 20
	errRollback := errors.New("roll back")
	for i := range commands {
		err := tm.Run(ctx, "AddItem", func(ctx context.Context) error {
			if err := outbox.Emit(ctx, itemAdded{Cart: fmt.Sprintf("cart-%d", i%3), N: i}, auditNoted{N: i}); err != nil {
				return err
			}
			if i%5 == 4 {
				return errRollback
			}
			return nil
		})
		if i%5 == 4 {
			require.ErrorIs(t, err, errRollback)
			continue
		}
		require.NoError(t, err)
	}

	logger := watermill.NewSlogLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	out := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, logger)
	defer out.Close()
	carts, err := out.Subscribe(ctx, "carts")
	require.NoError(t, err)
	audit, err := out.Subscribe(ctx, "audit")
	require.NoError(t, err)

	_, err = store.NewStockForwarder(out, gormstore.StockForwarderConfig{})
	require.ErrorIs(t, err, gormstore.ErrInvalidConfig, "a logger is required")
	fwd, err := store.NewStockForwarder(out, gormstore.StockForwarderConfig{
		Logger:     logger,
		Subscriber: wsql.SubscriberConfig{PollInterval: 10 * time.Millisecond},
	})
	require.NoError(t, err)
	runDone := make(chan error, 1)
	go func() { runDone <- fwd.Run(ctx) }()
	defer func() {
		require.NoError(t, fwd.Close())
		require.NoError(t, <-runDone)
	}()

	got := map[string][]*message.Message{}
	deadline := time.After(30 * time.Second)
	for n := 0; n < len(want); n++ {
		var m *message.Message
		var topic string
		select {
		case m = <-carts:
			topic = "carts"
		case m = <-audit:
			topic = "audit"
		case <-deadline:
			t.Fatalf("received %d of %d events", n, len(want))
		}
		m.Ack()
		got[topic] = append(got[topic], m)
	}

	var gotUUIDs []string
	for i, m := range got["carts"] {
		var ev itemAdded
		require.NoError(t, json.Unmarshal(m.Payload, &ev))
		require.Equal(t, ev.Cart, m.Metadata.Get(outbox.MetadataPartitionKey), "message %d: the partition key travels in the metadata", i)
		require.Equal(t, "itemAdded", m.Metadata.Get(outbox.MetadataName))
		require.Equal(t, "AddItem", m.Metadata.Get(outbox.MetadataCommand))
		require.NotEmpty(t, m.Metadata.Get(outbox.MetadataCorrelationID))
		require.NotEqual(t, 4, ev.N%5, "event of a rolled-back command relayed")
		if i > 0 {
			var prev itemAdded
			require.NoError(t, json.Unmarshal(got["carts"][i-1].Payload, &prev))
			require.Less(t, prev.N, ev.N, "commit order")
		}
		gotUUIDs = append(gotUUIDs, m.UUID)
	}
	for _, m := range got["audit"] {
		gotUUIDs = append(gotUUIDs, m.UUID)
	}
	require.ElementsMatch(t, want, gotUUIDs)
	require.Len(t, got["carts"], commands-commands/5)

	select {
	case m := <-carts:
		t.Fatalf("unexpected extra event %s", m.UUID)
	case m := <-audit:
		t.Fatalf("unexpected extra event %s", m.UUID)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestWatermillSQLConfig(t *testing.T) {
	t.Parallel()
	pg := testdb.Open(t, testdb.Postgres)

	_, err := gormstore.NewWatermillSQL(nil, gormstore.WatermillSQLConfig{})
	require.ErrorIs(t, err, gormstore.ErrInvalidConfig)
	_, err = gormstore.NewWatermillSQL(testdb.Open(t, testdb.SQLite), gormstore.WatermillSQLConfig{})
	require.ErrorIs(t, err, gormstore.ErrUnsupportedDialect)
	_, err = gormstore.NewWatermillSQL(pg, gormstore.WatermillSQLConfig{ForwarderTopic: `x"; DROP TABLE y`})
	require.ErrorIs(t, err, gormstore.ErrInvalidConfig)
	_, err = gormstore.NewWatermillSQL(pg, gormstore.WatermillSQLConfig{Schema: wsql.DefaultPostgreSQLSchema{
		GeneratePayloadType: func(string) string { return "BYTEA" },
	}})
	require.ErrorIs(t, err, gormstore.ErrInvalidConfig)

	s, err := gormstore.NewWatermillSQL(pg, gormstore.WatermillSQLConfig{Schema: wsql.DefaultPostgreSQLSchema{
		GeneratePayloadType: func(string) string { return "JSONB" },
	}})
	require.NoError(t, err)
	require.Equal(t, gormstore.DefaultForwarderTopic, s.ForwarderTopic())
	require.Equal(t, `"watermill_forwarder_topic"`, s.Table())
	require.NoError(t, s.Migrate(context.Background()))
	sc := s.SubscriberConfig()
	require.NotNil(t, sc.SchemaAdapter)
	require.NotNil(t, sc.OffsetsAdapter)
	require.False(t, sc.InitializeSchema)
	_, err = s.NewStockForwarder(nil, gormstore.StockForwarderConfig{Logger: watermill.NopLogger{}})
	require.ErrorIs(t, err, gormstore.ErrInvalidConfig)
}

// TestSQLTx unwraps the *sql.Tx of GORM transactions, with and without
// PrepareStmt, and refuses a *gorm.DB that is not a transaction.
func TestSQLTx(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.Postgres)
	_, err := gormstore.SQLTx(db)
	require.ErrorIs(t, err, outbox.ErrNoTransaction)
	_, err = gormstore.SQLTx(nil)
	require.ErrorIs(t, err, outbox.ErrNoTransaction)
	for _, prepare := range []bool{false, true} {
		sess := db.Session(&gorm.Session{PrepareStmt: prepare})
		errRollback := errors.New("roll back")
		require.ErrorIs(t, sess.Transaction(func(tx *gorm.DB) error {
			if prepare {
				require.IsType(t, &gorm.PreparedStmtTX{}, tx.Statement.ConnPool)
			}
			sqlTx, err := gormstore.SQLTx(tx)
			require.NoError(t, err)
			// The *sql.Tx is the GORM transaction: it sees its writes.
			require.NoError(t, tx.Exec(`CREATE TABLE sqltx_probe (n int)`).Error)
			require.NoError(t, tx.Exec(`INSERT INTO sqltx_probe VALUES (7)`).Error)
			var n int
			require.NoError(t, sqlTx.QueryRow(`SELECT n FROM sqltx_probe`).Scan(&n))
			require.Equal(t, 7, n)
			return errRollback
		}), errRollback)
	}
}
