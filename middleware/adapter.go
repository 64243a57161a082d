package middleware

import "context"

// Wrap returns the transactional form of h, for users of another command
// bus or mediator, or of plain functions: each call runs h as a command
// under t (Transactional.Run), in a new transaction or joining the one ctx
// carries, with the transaction (outbox.Tx) and the event collector
// (outbox.Emit) in the context h gets. The command is named for event
// metadata by TransactionalConfig.CommandName (default cqrs.StructName of
// cmd). h's error is returned unchanged; serialization failures are
// retried as for any command. Wrap panics if t or h is nil.
//
//	placeOrder := middleware.Wrap(tm, func(ctx context.Context, cmd PlaceOrder) error { ... })
//	err := placeOrder(ctx, PlaceOrder{ID: "o-1"})
func Wrap[C any](t *Transactional, h func(ctx context.Context, cmd C) error) func(ctx context.Context, cmd C) error {
	if t == nil || h == nil {
		panic("middleware.Wrap: nil Transactional or handler")
	}
	return func(ctx context.Context, cmd C) error {
		return t.Run(ctx, t.cfg.CommandName(cmd), func(ctx context.Context) error {
			return h(ctx, cmd)
		})
	}
}

// WrapResult is Wrap for handlers that return a result with their error,
// as query-style mediators do. It returns the result of the attempt that
// committed, or the zero R with the error when the command did not commit
// (the handler's result is then discarded with its transaction). It
// panics if t or h is nil.
func WrapResult[C, R any](t *Transactional, h func(ctx context.Context, cmd C) (R, error)) func(ctx context.Context, cmd C) (R, error) {
	if t == nil || h == nil {
		panic("middleware.WrapResult: nil Transactional or handler")
	}
	return func(ctx context.Context, cmd C) (R, error) {
		var res R
		err := t.Run(ctx, t.cfg.CommandName(cmd), func(ctx context.Context) error {
			var err error
			res, err = h(ctx, cmd)
			return err
		})
		if err != nil {
			var zero R
			return zero, err
		}
		return res, nil
	}
}
