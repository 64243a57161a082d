package handlers

import (
	"context"

	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/outbox"
)

// Returning adapts a handler that returns its events instead of emitting
// them to a [bus.HandlerFunc]. When h returns a nil error, its events are
// emitted in order with outbox.Emit, so they are saved with the command's
// transaction exactly as if h had emitted them; a nil event fails the command
// with outbox.ErrNilEvent. When h returns an error, its events are dropped
// and the error is returned unchanged.
//
// Emit stays the one way events leave a handler; Returning is for handlers
// that are naturally decision functions. See the package documentation.
func Returning[C any](h func(ctx context.Context, cmd C) ([]any, error)) bus.HandlerFunc[C] {
	if h == nil {
		// bus.Register rejects a nil handler with a clear error.
		return nil
	}
	return func(ctx context.Context, cmd C) error {
		events, err := h(ctx, cmd)
		if err != nil {
			return err
		}
		if len(events) == 0 {
			return nil
		}
		return outbox.Emit(ctx, events...)
	}
}
