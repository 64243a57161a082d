package middleware

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/txoutbox/txoutbox/bus"
)

// ErrPanic is matched (errors.Is) by every *PanicError.
var ErrPanic = errors.New("command handler panicked")

// PanicError is the error Recover returns for a handler that panicked.
type PanicError struct {
	// Value is the value passed to panic.
	Value any
	// Stack is the stack of the panicking goroutine.
	Stack []byte
}

// Error implements error.
func (e *PanicError) Error() string { return fmt.Sprintf("%v: %v", ErrPanic, e.Value) }

// Unwrap returns ErrPanic, or the panic value when it is an error.
func (e *PanicError) Unwrap() []error {
	if err, ok := e.Value.(error); ok {
		return []error{ErrPanic, err}
	}
	return []error{ErrPanic}
}

// Recover returns middleware that turns a panic in the rest of the chain
// into a *PanicError. Place it outermost, before Transactional, so the
// transaction has already been rolled back when the panic is recovered.
func Recover() bus.Middleware {
	return func(next bus.Handler) bus.Handler {
		return func(ctx context.Context, cmd any) (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = &PanicError{Value: r, Stack: debug.Stack()}
				}
			}()
			return next(ctx, cmd)
		}
	}
}
