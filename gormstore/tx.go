package gormstore

import (
	"context"
	"errors"

	"gorm.io/gorm"
)

// ErrNoTransaction is returned by Tx when the context carries no transaction.
var ErrNoTransaction = errors.New("gormstore: no transaction in context (run the handler through middleware.Transactional)")

type txKey struct{}

// WithTx returns a context that carries tx as the current transaction.
// The transactional middleware calls it for each command. Call it yourself
// to make commands dispatched with the returned context join a transaction
// you manage (they then save their events into tx, and you commit).
func WithTx(ctx context.Context, tx *gorm.DB) context.Context {
	return context.WithValue(ctx, txKey{}, tx)
}

// Tx returns the transaction of the command running in ctx, bound to ctx.
// Outside a transactional handler it returns ErrNoTransaction.
func Tx(ctx context.Context) (*gorm.DB, error) {
	tx, ok := ctx.Value(txKey{}).(*gorm.DB)
	if !ok || tx == nil {
		return nil, ErrNoTransaction
	}
	return tx.WithContext(ctx), nil
}
