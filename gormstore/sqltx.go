package gormstore

import (
	"database/sql"
	"fmt"

	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// errNotATx is returned by SQLTx for a *gorm.DB that is not a transaction.
var errNotATx = fmt.Errorf("%w: the *gorm.DB is not a transaction", outbox.ErrNoTransaction)

// SQLTx returns the *sql.Tx behind tx, a GORM transaction (the one
// outbox.Tx returns, or the *gorm.DB that db.Transaction passes to its
// function), so that libraries built on database/sql can write in the same
// transaction. Inside a transaction tx.Statement.ConnPool is the *sql.Tx
// itself, or a *gorm.PreparedStmtTX wrapping it when GORM runs with
// PrepareStmt; SQLTx unwraps both. For a *gorm.DB that is not a transaction
// it returns an error wrapping outbox.ErrNoTransaction.
func SQLTx(tx *gorm.DB) (*sql.Tx, error) {
	if tx == nil || tx.Statement == nil {
		return nil, errNotATx
	}
	switch pool := tx.Statement.ConnPool.(type) {
	case *sql.Tx:
		return pool, nil
	case *gorm.PreparedStmtTX:
		if sqlTx, ok := pool.Tx.(*sql.Tx); ok && sqlTx != nil {
			return sqlTx, nil
		}
		return nil, fmt.Errorf("%w: PrepareStmt transaction wraps %T, not *sql.Tx", outbox.ErrNoTransaction, pool.Tx)
	case *pinnedTx:
		return nil, fmt.Errorf("%w: the command's transaction runs on a held connection with its commit pipelined, with no *sql.Tx behind it (set gormstore.Config.NoPipeline for handlers that need one)", outbox.ErrNoTransaction)
	case nil:
		return nil, errNotATx
	default:
		if _, ok := pool.(gorm.TxCommitter); ok {
			return nil, fmt.Errorf("%w: transaction connection is %T, not *sql.Tx", outbox.ErrNoTransaction, pool)
		}
		return nil, errNotATx
	}
}
