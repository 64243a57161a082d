package gormstore

import (
	"context"
	"fmt"
	"time"

	"github.com/txoutbox/txoutbox/outbox"
)

// driver is one database's part of a Store: its statements (sql/<name>.sql),
// its state, and every answer that differs between databases. New picks
// one from the GORM dialector; nothing outside the drivers asks which
// database a store runs on. docs/architecture.md lists what adding a
// database takes.
type driver interface {
	// name is the database's name: the folder of its migrations
	// (migrations/<name>) and of its statements' texts (testdata/sql).
	name() string
	// migrateLock is the advisory lock a migration holds, 0 for none.
	migrateLock() int64
	// insert returns the statement that saves records, and its arguments.
	insert(records []outbox.Record) (string, []any, error)
	// nowArgs are the arguments of the statement "now" (the current time)
	// where the database has no clock the rows share.
	nowArgs() []any
	// cutoffArg is the argument of the statement "cutoff": the delivered
	// time before which a row is older than olderThan.
	cutoffArg(olderThan time.Duration) any
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
	// missingTable tells the error of a statement on a table that does not
	// exist.
	missingTable(err error) bool
}

// newDriver returns the driver of s's database, chosen by the GORM
// dialector's name.
func newDriver(s *Store) (driver, error) {
	switch name := s.db.Dialector.Name(); name {
	case "postgres":
		return newPostgresDriver(s)
	case "sqlite":
		return newSQLiteDriver(s)
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedDialect, name)
	}
}
