package outbox

import (
	"context"
	"database/sql"
	"errors"

	"gorm.io/gorm"
)

// ErrCommitUnknown is returned when the connection failed after the
// COMMIT of a command's transaction was sent and before its answer came:
// the transaction may have committed or not. Such a command is not run
// again (that could apply it twice); find out from the database what
// happened.
var ErrCommitUnknown = errors.New("outbox: the connection failed after COMMIT was sent; the transaction may or may not have committed")

// TxFunc runs a command in tx and returns the records to save with it:
// the function a [TxRunner] runs.
type TxFunc func(tx *gorm.DB) ([]Record, error)

// TxRunner is implemented by a Store that runs a command's transaction
// itself, so that it can write the command's records in the same round
// trip as the COMMIT (gormstore on PostgreSQL). [RunTx] uses it.
type TxRunner interface {
	// RunTx begins a transaction on db with opts (nil for the database's
	// defaults) and runs fn in it. If fn returns an error or panics, the
	// transaction is rolled back and the error returned (the panic goes
	// on); otherwise the records fn returned are saved in the
	// transaction, which commits. A nil error means the transaction
	// committed.
	RunTx(ctx context.Context, db *gorm.DB, opts *sql.TxOptions, fn TxFunc) error
}

// RunTx runs fn in a new transaction of db and saves the records it
// returns with s before the commit, with the rules of [TxRunner.RunTx]:
// through s when s is a TxRunner, otherwise in a GORM transaction
// (db.Transaction) with s.Save.
func RunTx(ctx context.Context, db *gorm.DB, s Store, opts *sql.TxOptions, fn TxFunc) error {
	if r, ok := s.(TxRunner); ok {
		return r.RunTx(ctx, db, opts, fn)
	}
	var txOpts []*sql.TxOptions
	if opts != nil {
		txOpts = []*sql.TxOptions{opts}
	}
	return db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		recs, err := fn(tx)
		if err != nil {
			return err
		}
		return s.Save(ctx, tx, recs)
	}, txOpts...)
}
