package outbox

import (
	"context"

	"gorm.io/gorm"
)

type txKey struct{}

// WithTx returns a context that carries tx as the current transaction.
// The transactional middleware calls it for each command, and the inbox
// for each message. Call it yourself to make commands dispatched with the
// returned context join a transaction you manage (they then save their
// events into tx, and you commit).
func WithTx(ctx context.Context, tx *gorm.DB) context.Context {
	return context.WithValue(ctx, txKey{}, tx)
}

// Tx returns the transaction of the command (or inbox message) running in
// ctx, bound to ctx: the handler writes through it, and its events are
// saved in it. Outside a transactional handler it returns ErrNoTransaction.
func Tx(ctx context.Context) (*gorm.DB, error) {
	tx, ok := ctx.Value(txKey{}).(*gorm.DB)
	if !ok || tx == nil {
		return nil, ErrNoTransaction
	}
	return tx.WithContext(ctx), nil
}
