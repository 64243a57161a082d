package outbox

import (
	"context"

	"gorm.io/gorm"
)

// Store writes records to the outbox table. Package gormstore implements it
// for PostgreSQL and SQLite.
type Store interface {
	// Save writes records inside tx, the command's transaction, so they are
	// committed or rolled back with it. Implementations write all records
	// in as few round trips as they can (one multi-row INSERT for gormstore).
	// Save with no records does nothing.
	Save(ctx context.Context, tx *gorm.DB, records []Record) error
}

// CommitNotifier is implemented by stores that tell other processes when
// rows were committed (gormstore on PostgreSQL sends a NOTIFY). The
// transactional middleware calls NotifyCommitted after each top-level
// commit that saved events; it must not block.
type CommitNotifier interface {
	NotifyCommitted()
}

// RetryClassifier is implemented by stores that know which errors of
// their database allow running a failed transaction again (serialization
// failures, deadlocks). The transactional middleware retries a command
// after such an error (middleware.TransactionalConfig.Retryable defaults
// to the Store's Retryable).
type RetryClassifier interface {
	// Retryable reports whether the transaction that failed with err may
	// be run again from its start.
	Retryable(err error) bool
}
