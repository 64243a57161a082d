package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// The tests below are about the commit on PostgreSQL, where the store
// sends the INSERT of a command's events with its COMMIT in one round trip
// (gormstore.Store.RunTx): what a failure at each step leaves behind.

// placeAndEmit inserts order id and emits one event for it.
func placeAndEmit(ctx context.Context, id string) error {
	if err := insertOrder(ctx, id, 1); err != nil {
		return err
	}
	return outbox.Emit(ctx, OrderPlaced{OrderID: id})
}

// requireWorks checks that a command commits on f after a failure: the
// pool's connections are usable.
func requireWorks(t *testing.T, f *fixture, id string) {
	t.Helper()
	for range 20 { // more commands than connections in the pool
		require.NoError(t, f.run(context.Background(), func(ctx context.Context) error { return placeAndEmit(ctx, id) }))
		require.NoError(t, f.db.Exec("DELETE FROM orders WHERE id = ?", id).Error)
	}
}

func TestPipelinedCommitUniqueViolation(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.Postgres)
	uuid := outbox.NewUUID()
	emitFixed := func(ctx context.Context, order string) error {
		if err := insertOrder(ctx, order, 1); err != nil {
			return err
		}
		return outbox.EmitMessage(ctx, "orders", message.NewMessage(uuid, []byte(`{}`)))
	}
	require.NoError(t, f.run(context.Background(), func(ctx context.Context) error { return emitFixed(ctx, "o-1") }))

	// The same message UUID again while the first row is pending: the
	// INSERT, sent with the COMMIT, violates the unique index, and the
	// server answers the COMMIT with ROLLBACK.
	err := f.run(context.Background(), func(ctx context.Context) error { return emitFixed(ctx, "o-2") })
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "23505", pgErr.Code, "unique violation: %v", err)
	require.Contains(t, err.Error(), "insert into txoutbox_outbox")
	require.Zero(t, f.orderCount(t, "id = 'o-2'"), "the business row of the failed command committed")
	require.EqualValues(t, 1, f.outboxCount(t))
	requireWorks(t, f, "o-3")
}

func TestPipelinedCommitBackendTerminated(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.Postgres)
	admin := testdb.OpenURL(t, testdb.URL())
	err := f.run(context.Background(), func(ctx context.Context) error {
		if err := placeAndEmit(ctx, "o-1"); err != nil {
			return err
		}
		tx, err := outbox.Tx(ctx)
		if err != nil {
			return err
		}
		var pid int
		if err := tx.Raw("SELECT pg_backend_pid()").Scan(&pid).Error; err != nil {
			return err
		}
		// The handler's connection ends between its last statement and
		// the commit.
		var ok bool
		if err := admin.Raw("SELECT pg_terminate_backend(?, 5000)", pid).Scan(&ok).Error; err != nil {
			return err
		}
		if !ok {
			return errors.New("backend not terminated")
		}
		return nil
	})
	require.Error(t, err)
	t.Logf("terminated: %v", err)
	require.NotErrorIs(t, err, outbox.ErrCommitUnknown, "the server said it ended the session before the INSERT ran: %v", err)
	f.requireNothingSaved(t)
	requireWorks(t, f, "o-2")
}

func TestPipelinedCommitContextCancelled(t *testing.T) {
	t.Parallel()
	db, schema := testdb.OpenPostgres(t)
	sqlDB, err := db.DB()
	require.NoError(t, err)
	sqlDB.SetMaxOpenConns(1) // the connection the first command prepared the INSERT on
	f := newFixtureOn(t, testdb.Postgres, db)
	require.NoError(t, f.run(context.Background(), func(ctx context.Context) error { return placeAndEmit(ctx, "o-0") }))
	require.NoError(t, db.Exec("TRUNCATE orders, txoutbox_outbox").Error)
	// Another transaction holds a lock that makes the outbox INSERT wait:
	// the command's context is cancelled while its INSERT and COMMIT are on
	// the wire.
	other := testdb.OpenURL(t, testdb.SchemaURL(t, schema))
	lockTx := other.Begin()
	require.NoError(t, lockTx.Error)
	defer lockTx.Rollback()
	require.NoError(t, lockTx.Exec("LOCK TABLE txoutbox_outbox IN SHARE MODE").Error)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- f.run(ctx, func(ctx context.Context) error { return placeAndEmit(ctx, "o-1") })
	}()
	require.Eventually(t, func() bool {
		var waiting int64
		other.Raw("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO \"txoutbox_outbox\"%'").Scan(&waiting)
		return waiting == 1
	}, 10*time.Second, 5*time.Millisecond, "the command's INSERT does not wait for the lock")
	cancel()
	select {
	case err := <-done:
		t.Logf("cancelled: %v", err)
		require.ErrorIs(t, err, context.Canceled)
		require.Contains(t, err.Error(), "rolled back")
	case <-time.After(10 * time.Second):
		t.Fatal("the command did not return after its context was cancelled")
	}
	require.NoError(t, lockTx.Rollback().Error)
	f.requireNothingSaved(t)
	requireWorks(t, f, "o-2")
}

func TestPipelinedCommitIgnoredStatementError(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.Postgres)
	err := f.run(context.Background(), func(ctx context.Context) error {
		if err := placeAndEmit(ctx, "o-1"); err != nil {
			return err
		}
		tx, _ := outbox.Tx(ctx)
		_ = tx.Exec("SELECT * FROM no_such_table").Error // ignored: the transaction is aborted
		return nil
	})
	require.ErrorIs(t, err, pgx.ErrTxCommitRollback)
	f.requireNothingSaved(t)
	requireWorks(t, f, "o-2")
}

func TestPipelinedCommitRefusesWhatNeedsASQLTx(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.Postgres)
	t.Run("PrepareStmt session", func(t *testing.T) {
		// Also with a statement the pool prepared before.
		require.NoError(t, f.db.Session(&gorm.Session{PrepareStmt: true}).Exec("INSERT INTO orders (id, amount) VALUES (?, ?)", "o-0", 1).Error)
		for _, id := range []string{"o-0b", "o-1"} {
			err := f.run(context.Background(), func(ctx context.Context) error {
				if err := outbox.Emit(ctx, OrderPlaced{OrderID: id}); err != nil {
					return err
				}
				tx, _ := outbox.Tx(ctx)
				_ = tx.Session(&gorm.Session{PrepareStmt: true}).Exec("INSERT INTO orders (id, amount) VALUES (?, ?)", id, 1).Error
				return nil
			})
			require.ErrorContains(t, err, "PrepareStmt")
			require.Zero(t, f.orderCount(t, "id = ?", id), "a prepared statement ran outside the transaction")
		}
		require.Zero(t, f.outboxCount(t))
	})
	t.Run("handler commits", func(t *testing.T) {
		err := f.run(context.Background(), func(ctx context.Context) error {
			if err := placeAndEmit(ctx, "o-2"); err != nil {
				return err
			}
			tx, _ := outbox.Tx(ctx)
			_ = tx.Commit().Error
			return nil
		})
		require.ErrorContains(t, err, "committed or rolled back by the transactional middleware")
		require.Zero(t, f.orderCount(t, "id = 'o-2'"))
	})
	t.Run("SQLTx", func(t *testing.T) {
		err := f.run(context.Background(), func(ctx context.Context) error {
			tx, _ := outbox.Tx(ctx)
			_, err := gormstore.SQLTx(tx)
			return err
		})
		require.ErrorIs(t, err, outbox.ErrNoTransaction)
		require.ErrorContains(t, err, "NoPipeline")
	})
}

func TestNoPipelineGivesASQLTx(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.Postgres)
	f := newFixtureOn(t, testdb.Postgres, db, withConfig(func(c *middleware.TransactionalConfig) {
		st, err := gormstore.New(db, gormstore.Config{NoPipeline: true})
		require.NoError(t, err)
		c.Store = st
	}))
	require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
		if err := placeAndEmit(ctx, "o-1"); err != nil {
			return err
		}
		tx, _ := outbox.Tx(ctx)
		_, err := gormstore.SQLTx(tx)
		return err
	}))
	require.EqualValues(t, 1, f.outboxCount(t))
}

func TestSerializationFailureAtCommitIsRetried(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.Postgres)
	// A deferred constraint trigger runs at COMMIT, after the outbox
	// INSERT sent with it, and fails the first attempt's COMMIT with
	// 40001. The sequence counts attempts: a rollback does not undo
	// nextval.
	for _, q := range []string{
		`CREATE SEQUENCE attempts`,
		`CREATE TABLE checked (id TEXT PRIMARY KEY)`,
		`CREATE FUNCTION fail_first() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF nextval('attempts') = 1 THEN
				RAISE EXCEPTION 'conflict at commit' USING ERRCODE = '40001';
			END IF;
			RETURN NULL;
		END $$`,
		`CREATE CONSTRAINT TRIGGER fail_first AFTER INSERT ON checked DEFERRABLE INITIALLY DEFERRED
			FOR EACH ROW EXECUTE FUNCTION fail_first()`,
	} {
		require.NoError(t, f.db.Exec(q).Error)
	}
	runs := 0
	require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
		runs++
		tx, _ := outbox.Tx(ctx)
		if err := tx.Exec("INSERT INTO checked (id) VALUES ('c')").Error; err != nil {
			return err
		}
		return placeAndEmit(ctx, "o-1")
	}))
	require.Equal(t, 2, runs, "the command ran again after its COMMIT failed with 40001")
	require.EqualValues(t, 1, f.orderCount(t, ""))
	require.EqualValues(t, 1, f.outboxCount(t), "the event is saved once, by the attempt that committed")
}

func TestPipelinedCommitSavesEveryColumn(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.Postgres)
	const n = 2500 // more than one Save chunk: the pipelined INSERT takes all
	var msgs []*message.Message
	for i := range n {
		payload := []byte(fmt.Sprintf(`{"n":%d,"s":"é \"q\" \u2028"}`, i))
		if i == 7 {
			payload = nil // an empty payload is stored empty, not NULL
		}
		m := message.NewMessage(outbox.NewUUID(), payload)
		m.Metadata.Set("quote", `a "b" \ c`+"\n\t\x01")
		m.Metadata.Set("unicode", "ü🙂")
		msgs = append(msgs, m)
	}
	require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
		return outbox.EmitMessage(ctx, "topic-ä", msgs...)
	}))
	rows := f.outbox(t)
	require.Len(t, rows, n)
	for i, r := range rows {
		require.Equal(t, msgs[i].UUID, r.UUID)
		require.Equal(t, "topic-ä", r.Topic)
		require.Equal(t, string(msgs[i].Payload), string(r.Payload), "payload %d", i)
		md := r.meta(t)
		require.Equal(t, `a "b" \ c`+"\n\t\x01", md["quote"])
		require.Equal(t, "ü🙂", md["unicode"])
	}
	require.NotNil(t, rows[7].Payload)
	require.Empty(t, rows[7].Payload)
}

func TestPipelinedCommitAfterItsStatementWasLost(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.Postgres)
	sqlDB, err := db.DB()
	require.NoError(t, err)
	sqlDB.SetMaxOpenConns(1) // every command on the same connection
	f := newFixtureOn(t, testdb.Postgres, db)
	require.NoError(t, f.run(context.Background(), func(ctx context.Context) error { return placeAndEmit(ctx, "o-1") }))
	// The server forgets the store's prepared INSERT (as after a session
	// reset by a pooler), and pgx does not know.
	var name string
	require.NoError(t, db.Raw(`SELECT name FROM pg_prepared_statements WHERE name LIKE 'txoutbox\_%'`).Scan(&name).Error)
	require.NotEmpty(t, name, "the store's INSERT is not prepared on the connection")
	require.NoError(t, db.Exec(`DEALLOCATE "`+name+`"`).Error)
	runs := 0
	require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
		runs++
		return placeAndEmit(ctx, "o-2")
	}))
	require.Equal(t, 2, runs, "the command whose prepared INSERT was gone runs again")
	require.EqualValues(t, 2, f.outboxCount(t))
	require.EqualValues(t, 2, f.orderCount(t, ""))
	requireWorks(t, f, "o-3")
}

// TestPipelinedCommitSavesOneEvent checks the INSERT of a single record,
// a statement of its own: every column as emitted, an empty payload stored
// empty.
func TestPipelinedCommitSavesOneEvent(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.Postgres)
	for i, payload := range [][]byte{[]byte(`{"s":"é \"q\""}`), nil} {
		m := message.NewMessage(outbox.NewUUID(), payload)
		m.Metadata.Set("quote", `a "b" \ c`+"\n")
		m.Metadata.Set("k", fmt.Sprint(i))
		require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
			return outbox.EmitMessage(ctx, "topic-ä", m)
		}))
		rows := f.outbox(t)
		require.Len(t, rows, i+1)
		r := rows[i]
		require.Equal(t, m.UUID, r.UUID)
		require.Equal(t, "topic-ä", r.Topic)
		require.Equal(t, string(payload), string(r.Payload))
		require.NotNil(t, r.Payload, "an empty payload is stored empty, not NULL")
		md := r.meta(t)
		require.Equal(t, `a "b" \ c`+"\n", md["quote"])
		require.Equal(t, fmt.Sprint(i), md["k"])
		require.Equal(t, "do", md[outbox.MetadataCommand])
	}
}
