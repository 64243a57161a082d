package walrelay_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

// placed is the event of the write mode tests.
type placed struct {
	ID  string
	Key string
}

func (p placed) PartitionKey() string { return p.Key }

// TestWriteModeRelaysCommands runs commands through the transactional
// middleware on a store in WAL mode, with the commit pipelined and not,
// and relays them: every committed event arrives once, in commit order,
// with the UUID the encoder gave it; a rolled-back command's never do,
// and no outbox row is written.
func TestWriteModeRelaysCommands(t *testing.T) {
	for _, noPipeline := range []bool{false, true} {
		t.Run(fmt.Sprintf("no_pipeline=%v", noPipeline), func(t *testing.T) {
			conn := connect(t)
			cfg := setup(t, conn)
			db, _ := testdb.OpenPostgres(t)
			require.NoError(t, gormstore.Migrate(context.Background(), db))
			store, err := gormstore.New(db, gormstore.Config{NoPipeline: noPipeline, WAL: &gormstore.WALConfig{Slot: cfg.Slot, Prefix: cfg.Prefix}})
			require.NoError(t, err)
			var committed []string
			tr, err := middleware.NewTransactional(middleware.TransactionalConfig{
				DB: db, Store: store,
				Encoder: outbox.NewEncoder(outbox.EncoderConfig{Topic: func(string, any) string { return topic }}),
				AfterCommit: []func(middleware.AfterCommitParams){func(p middleware.AfterCommitParams) {
					for _, r := range p.Records {
						committed = append(committed, r.Message.UUID)
					}
				}},
			})
			require.NoError(t, err)
			s := newSink(t)
			start(t, s.pub, cfg)
			ctx := context.Background()
			for i := range 40 {
				events := []any{placed{ID: fmt.Sprint(i), Key: fmt.Sprint("k", i%3)}}
				if i%4 == 0 {
					events = append(events, placed{ID: fmt.Sprint(i, "b"), Key: "k9"})
				}
				err := tr.Run(ctx, "Place", func(ctx context.Context) error {
					if err := outbox.Emit(ctx, events...); err != nil {
						return err
					}
					if i%5 == 0 {
						return errors.New("rolled back")
					}
					return nil
				})
				if i%5 == 0 {
					require.Error(t, err)
				} else {
					require.NoError(t, err)
				}
			}
			got := s.waitFor(t, len(committed), 20*time.Second)
			time.Sleep(200 * time.Millisecond) // nothing more may come
			require.Equal(t, committed, s.received())
			require.Len(t, got, len(committed))
			require.Zero(t, testdb.Count(t, db, gormstore.DefaultTable, ""), "the WAL mode wrote table rows")
		})
	}
}

// TestWriteModeNeedsTheSlot checks that a store in WAL mode refuses to
// write before its slot exists (the slot would never see the events).
func TestWriteModeNeedsTheSlot(t *testing.T) {
	connect(t)
	db, _ := testdb.OpenPostgres(t)
	require.NoError(t, gormstore.Migrate(context.Background(), db))
	for _, noPipeline := range []bool{false, true} {
		store, err := gormstore.New(db, gormstore.Config{NoPipeline: noPipeline, WAL: &gormstore.WALConfig{Slot: "txo_missing_" + randomHex(4)}})
		require.NoError(t, err)
		tr, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: store})
		require.NoError(t, err)
		err = tr.Run(context.Background(), "Place", func(ctx context.Context) error {
			return outbox.EmitMessage(ctx, topic, message.NewMessage(outbox.NewUUID(), []byte("{}")))
		})
		require.ErrorIs(t, err, gormstore.ErrWALNotReady)
		require.ErrorContains(t, err, "walrelay.Setup")
	}
}
