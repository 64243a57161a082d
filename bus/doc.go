// Package bus is a small typed command bus.
//
// A [Bus] maps each command type to exactly one handler. Handlers are
// registered with the generic [Register], so a handler receives its command
// already typed:
//
//	b := bus.New()
//	err := bus.Register(b, func(ctx context.Context, cmd PlaceOrder) error {
//		// ...
//		return nil
//	})
//	err = b.Dispatch(ctx, PlaceOrder{ID: "o-1"})
//
// Dispatch routes by the command's dynamic type: a handler registered for
// PlaceOrder receives Dispatch(ctx, PlaceOrder{...}), and one registered for
// *PlaceOrder receives Dispatch(ctx, &PlaceOrder{...}).
//
// # Middleware
//
// A [Middleware] wraps a [Handler]. Bus middleware (given to [New] or [Bus.Use])
// wraps every handler; per-handler middleware (given to [Register]) wraps one.
// The order is fixed and documented: bus middleware runs first, in the order it
// was added (the first one is the outermost), then the handler's own middleware,
// also outermost first, then the handler.
//
//	b := bus.New(A, B)          // bus middleware
//	bus.Register(b, h, C, D)    // per-handler middleware
//	// Dispatch runs: A -> B -> C -> D -> h
//
// The transactional outbox middleware lives in package middleware and is
// usually the first (outermost) bus middleware after recovery and logging.
//
// # Nested dispatch
//
// A handler may call Dispatch with the context it received; the nested
// command runs through the full middleware chain again. The transactional
// middleware recognises the nesting and joins the caller's transaction.
package bus
