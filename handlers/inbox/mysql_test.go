package inbox_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
	_ "time/tzdata" // the loc of the DSN

	"github.com/ThreeDotsLabs/watermill/message"
	gomysql "github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// The inbox on MySQL does not depend on the connection's settings: with
// affected rows counting found rows (clientFoundRows), times neither
// parsed (parseTime) nor in UTC (loc), and a session time_zone other than
// UTC, a duplicate is a duplicate, Cleanup deletes by age and a failed
// message's time reads back as written.
func TestMySQLConnectionSettings(t *testing.T) {
	t.Parallel()
	_, name := testdb.OpenMySQL(t)
	cfg, err := gomysql.ParseDSN(testdb.MySQLDSN(t, name))
	require.NoError(t, err)
	cfg.ClientFoundRows = true
	cfg.ParseTime = false
	cfg.Loc, err = time.LoadLocation("Asia/Kolkata") // UTC+5:30
	require.NoError(t, err)
	cfg.Params = map[string]string{"time_zone": "'-03:00'"}
	db, err := gorm.Open(mysql.New(mysql.Config{DSNConfig: cfg}), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	sqlDB, err := db.DB()
	require.NoError(t, err)
	t.Cleanup(func() { _ = sqlDB.Close() })

	var now atomic.Pointer[time.Time]
	set := func(tm time.Time) { now.Store(&tm) }
	base := time.Date(2026, 3, 29, 1, 30, 0, 123456000, time.UTC)
	set(base.Add(-2 * time.Hour))
	in, err := inbox.New(db, inbox.Config{Now: func() time.Time { return *now.Load() }})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, in.Migrate(ctx))

	nop := func(context.Context) error { return nil }
	for i, want := range []bool{false, true} {
		dup, err := in.Process(ctx, "c", "old", nop)
		require.NoError(t, err)
		require.Equal(t, want, dup, "delivery %d", i)
	}
	set(base)
	_, err = in.Process(ctx, "c", "young", nop)
	require.NoError(t, err)
	n, err := in.CountCleanup(ctx, time.Hour)
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
	n, err = in.Cleanup(ctx, time.Hour, 0)
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the row received 2h ago")
	require.EqualValues(t, 1, testdb.Count(t, db, in.Table(), "message_uuid = 'young'"))

	pubsub := newGoChannel(t)
	c := startConsumer(t, &fixture{dialect: testdb.MySQL, db: db, in: in}, pubsub, inbox.ConsumerConfig{
		Handler: func(*message.Message) error { return inbox.Permanent(errors.New("never")) },
	})
	msg := keyed("k", "p")
	require.NoError(t, pubsub.Publish("t", msg))
	require.Eventually(t, func() bool { return c.Stats().Parked == 1 }, 10*time.Second, time.Millisecond)
	rows, err := in.ListFailed(ctx, consumerName, 0, 10)
	require.NoError(t, err)
	require.Len(t, rows, 1)
	require.Equal(t, msg.UUID, rows[0].UUID)
	require.True(t, base.Equal(rows[0].FailedAt), "failed_at %v, written %v", rows[0].FailedAt, base)
	require.Equal(t, "k", rows[0].Metadata.Get(outbox.MetadataPartitionKey))
}

// A schema-qualified table is a table in another database on MySQL.
func TestSchemaQualifiedTableMySQL(t *testing.T) {
	t.Parallel()
	db, name := testdb.OpenMySQL(t)
	ctx := context.Background()
	other := name + "_inbox"
	t.Cleanup(func() { db.Exec("DROP DATABASE IF EXISTS `" + other + "`") })
	in, err := inbox.New(db, inbox.Config{Table: other + ".messages"})
	require.NoError(t, err)
	require.NoError(t, in.Migrate(ctx))
	require.NoError(t, in.Migrate(ctx))
	for i, want := range []bool{false, true} {
		dup, err := in.Process(ctx, "c", "m-1", func(context.Context) error { return nil })
		require.NoError(t, err)
		require.Equal(t, want, dup, "delivery %d", i)
	}
	require.EqualValues(t, 1, testdb.Count(t, db, "`"+other+"`.`messages`", ""))
	require.EqualValues(t, 0, testdb.Count(t, db, "`"+other+"`.`messages_failed`", ""), "the failed table is in the inbox's database")
	got, err := in.RetryUUIDs(ctx, "c", "m-1")
	require.NoError(t, err)
	require.Empty(t, got)
}
