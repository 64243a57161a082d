package gormstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// driver is one database's part of a Store: its statements (sql/<name>.sql),
// its state, and every answer that differs between databases. New picks
// one from the GORM dialector; nothing outside the drivers asks which
// database a store runs on. docs/architecture.md lists what adding a
// database takes.
type driver interface {
	// dialect names the database: its migrations are in
	// migrations/<dialect>, its statements in sql/<dialect>.sql.
	dialect() sqlschema.Dialect
	// migrationLock keeps concurrent migrations apart
	// (sqlschema.Migration.Lock); nil for none.
	migrationLock() func(tx *gorm.DB) (func() error, error)
	// insert returns a statement that saves the first n of records, and
	// its arguments; Save calls it until every record is saved, and runs
	// the statement on conn, the transaction's connection.
	insert(ctx context.Context, conn gorm.ConnPool, records []outbox.Record) (q string, args []any, n int, err error)
	// nowArgs are the arguments of the statement "now" (the current time)
	// where the database has no clock the rows share.
	nowArgs() []any
	// cutoffArg is the argument of the statement "cutoff": the delivered
	// time before which a row is older than olderThan.
	cutoffArg(olderThan time.Duration) any
	// purge deletes one batch of delivered rows (PurgeDeliveredBatch).
	purge(ctx context.Context, olderThan time.Duration, limit int) (int64, error)
	// claim claims rows for a forwarder (outbox.RelayStore.Claim).
	claim(ctx context.Context, p outbox.ClaimParams) (outbox.Claim, error)
	// hasDue reports whether a claim would find a row (outbox.DueChecker).
	hasDue(ctx context.Context, topics []string) (bool, error)
	// notifyCommitted wakes forwarders in other processes, without
	// blocking; a database that cannot does nothing.
	notifyCommitted()
	// listen calls wake after commits (outbox.Listener), or returns
	// outbox.ErrListenUnsupported.
	listen(ctx context.Context, wake func()) error
	// retryable tells an error after which the whole transaction may run
	// again (outbox.RetryClassifier).
	retryable(err error) bool
	// runTx runs a command's transaction (outbox.TxRunner).
	runTx(ctx context.Context, db *gorm.DB, opts *sql.TxOptions, fn outbox.TxFunc) error
	// missingTable tells the error of a statement on a table that does not
	// exist.
	missingTable(err error) bool
}

// newDriver returns the driver of s's database, chosen by the GORM
// dialector.
func newDriver(s *Store) (driver, error) {
	d, _ := sqlschema.DialectOf(s.db)
	switch d {
	case sqlschema.Postgres:
		return newPostgresDriver(s)
	case sqlschema.SQLite:
		return newSQLiteDriver(s)
	case sqlschema.MySQL:
		return newMySQLDriver(s)
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedDialect, s.db.Dialector.Name())
	}
}
