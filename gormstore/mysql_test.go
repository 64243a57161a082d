package gormstore_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// On MySQL one statement carries at most max_allowed_packet bytes: Save
// splits a command's INSERT to fit, and refuses a record that cannot fit
// alone, naming the limit, with nothing saved.
func TestMySQLSaveWithinMaxAllowedPacket(t *testing.T) {
	t.Parallel()
	s, db := migrated(t, testdb.MySQL, gormstore.Config{})
	ctx := context.Background()
	var limit int
	require.NoError(t, db.Raw("SELECT @@max_allowed_packet").Scan(&limit).Error)

	// Records that fit one by one but not in one statement.
	piece := strings.Repeat("x", limit/6)
	var recs []outbox.Record
	for range 8 {
		recs = append(recs, record("t", "k", piece))
	}
	require.NoError(t, db.Transaction(func(tx *gorm.DB) error { return s.Save(ctx, tx, recs) }))
	require.Equal(t, int64(8), testdb.Count(t, db, gormstore.DefaultTable, ""))
	claim, err := s.Claim(ctx, outbox.ClaimParams{Limit: 100})
	require.NoError(t, err)
	require.Len(t, claim.Rows(), 8, "the key's rows in save order")
	for i, r := range claim.Rows() {
		require.Equal(t, recs[i].Message.UUID, r.UUID)
	}
	require.NoError(t, claim.Release(ctx))

	// A record larger than the limit: a clear error, and the command's
	// other records are not saved either.
	big := record("t", "k", strings.Repeat("y", limit+1))
	err = db.Transaction(func(tx *gorm.DB) error {
		return s.Save(ctx, tx, []outbox.Record{record("t", "k", "small"), big})
	})
	require.ErrorIs(t, err, outbox.ErrPayloadTooLarge)
	require.ErrorContains(t, err, "max_allowed_packet")
	require.ErrorContains(t, err, big.Message.UUID)
	require.Equal(t, int64(8), testdb.Count(t, db, gormstore.DefaultTable, ""))
}

// A UUID, topic or key wider than the MySQL table's column is refused
// with the limit, and nothing of the command is saved.
func TestMySQLSaveRefusesTooLongValues(t *testing.T) {
	t.Parallel()
	s, db := migrated(t, testdb.MySQL, gormstore.Config{})
	ctx := context.Background()
	long := record("t", strings.Repeat("k", 1025), "x")
	err := db.Transaction(func(tx *gorm.DB) error {
		return s.Save(ctx, tx, []outbox.Record{record("t", "k", "ok"), long})
	})
	require.ErrorIs(t, err, gormstore.ErrValueTooLong)
	require.ErrorContains(t, err, "partition key is 1025 bytes, the MySQL table holds at most 1024")
	fits := record(strings.Repeat("t", 1024), strings.Repeat("k", 1024), "x")
	require.NoError(t, db.Transaction(func(tx *gorm.DB) error { return s.Save(ctx, tx, []outbox.Record{fits}) }))
	require.Equal(t, int64(1), testdb.Count(t, db, gormstore.DefaultTable, ""))
}

// The store reads DATETIME columns as times: a DSN without parseTime is
// refused at New with what to add.
func TestMySQLNeedsParseTime(t *testing.T) {
	t.Parallel()
	_, name := testdb.OpenMySQL(t)
	dsn := strings.Replace(testdb.MySQLDSN(t, name), "parseTime=true", "parseTime=false", 1)
	require.Contains(t, dsn, "parseTime=false")
	db, err := gorm.Open(mysql.Open(dsn), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	t.Cleanup(func() {
		if sqlDB, err := db.DB(); err == nil {
			_ = sqlDB.Close()
		}
	})
	_, err = gormstore.New(db, gormstore.Config{})
	require.ErrorIs(t, err, gormstore.ErrInvalidConfig)
	require.ErrorContains(t, err, "parseTime=true")
}
