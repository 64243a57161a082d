package bus_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
)

type placeOrder struct{ ID string }

type cancelOrder struct{ ID string }

type shipOrder struct{ ID string }

type commander interface{ CommandName() string }

func TestRegisterDispatchTyped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := bus.New()

	var gotValue placeOrder
	require.NoError(t, bus.Register(b, func(_ context.Context, cmd placeOrder) error {
		gotValue = cmd
		return nil
	}))
	var gotPtr *cancelOrder
	require.NoError(t, bus.Register(b, func(_ context.Context, cmd *cancelOrder) error {
		gotPtr = cmd
		return nil
	}))

	require.NoError(t, b.Dispatch(ctx, placeOrder{ID: "o-1"}))
	require.Equal(t, placeOrder{ID: "o-1"}, gotValue)

	cmd := &cancelOrder{ID: "o-2"}
	require.NoError(t, b.Dispatch(ctx, cmd))
	require.Same(t, cmd, gotPtr, "a pointer command reaches its handler as the same pointer")
}

func TestDispatchReturnsHandlerErrorUnchanged(t *testing.T) {
	t.Parallel()
	errRejected := errors.New("order rejected")
	b := bus.New(func(next bus.Handler) bus.Handler { return next })
	require.NoError(t, bus.Register(b, func(context.Context, placeOrder) error { return errRejected }))

	err := b.Dispatch(context.Background(), placeOrder{})
	require.Equal(t, errRejected, err, "the handler's error must come back as is, not wrapped")
}

func TestRegisterDuplicate(t *testing.T) {
	t.Parallel()
	b := bus.New()
	first := func(context.Context, placeOrder) error { return nil }
	require.NoError(t, bus.Register(b, first))

	err := bus.Register(b, func(context.Context, placeOrder) error { return errors.New("second") })
	require.ErrorIs(t, err, bus.ErrDuplicateHandler)
	require.Contains(t, err.Error(), "bus_test.placeOrder")

	// The first registration stays in place.
	require.NoError(t, b.Dispatch(context.Background(), placeOrder{}))

	// The value and pointer forms are different command types.
	require.NoError(t, bus.Register(b, func(context.Context, *placeOrder) error { return nil }))
}

func TestRegisterInvalid(t *testing.T) {
	t.Parallel()
	h := func(context.Context, placeOrder) error { return nil }
	mw := func(next bus.Handler) bus.Handler { return next }

	tests := map[string]func() error{
		"nil bus":      func() error { return bus.Register[placeOrder](nil, h) },
		"zero bus":     func() error { return bus.Register(&bus.Bus{}, h) },
		"nil handler":  func() error { return bus.Register[placeOrder](bus.New(), nil) },
		"nil mw":       func() error { return bus.Register(bus.New(), h, mw, nil) },
		"interface":    func() error { return bus.Register(bus.New(), func(context.Context, commander) error { return nil }) },
		"empty iface":  func() error { return bus.Register(bus.New(), func(context.Context, any) error { return nil }) },
		"error iface":  func() error { return bus.Register(bus.New(), func(context.Context, error) error { return nil }) },
		"fmt.Stringer": func() error { return bus.Register(bus.New(), func(context.Context, fmt.Stringer) error { return nil }) },
	}
	for name, register := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			err := register()
			require.ErrorIs(t, err, bus.ErrInvalidRegistration)
		})
	}

	err := bus.Register(bus.New(), func(context.Context, commander) error { return nil })
	require.ErrorContains(t, err, "bus_test.commander")
	require.ErrorContains(t, err, "interface")
}

func TestRegisterInterfaceLeavesBusUsable(t *testing.T) {
	t.Parallel()
	b := bus.New()
	require.Error(t, bus.Register(b, func(context.Context, any) error { return nil }))
	// The rejected registration did not capture any type.
	err := b.Dispatch(context.Background(), placeOrder{})
	require.ErrorIs(t, err, bus.ErrNoHandler)
}

func TestDispatchNilCommand(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := bus.New()
	var called atomic.Int32
	require.NoError(t, bus.Register(b, func(context.Context, *placeOrder) error {
		called.Add(1)
		return nil
	}))
	require.NoError(t, bus.Register(b, func(context.Context, map[string]int) error {
		called.Add(1)
		return nil
	}))

	err := b.Dispatch(ctx, nil)
	require.ErrorIs(t, err, bus.ErrNilCommand)
	require.NotErrorIs(t, err, bus.ErrNoHandler)

	err = b.Dispatch(ctx, (*placeOrder)(nil))
	require.ErrorIs(t, err, bus.ErrNilCommand)
	require.ErrorContains(t, err, "*bus_test.placeOrder", "the typed nil names its type")

	err = b.Dispatch(ctx, map[string]int(nil))
	require.ErrorIs(t, err, bus.ErrNilCommand)

	// A typed nil of a type with no handler is still a nil command.
	err = b.Dispatch(ctx, (*shipOrder)(nil))
	require.ErrorIs(t, err, bus.ErrNilCommand)

	require.Zero(t, called.Load(), "no handler runs for a nil command")
}

func TestDispatchNilCommandSkipsMiddleware(t *testing.T) {
	t.Parallel()
	var ran atomic.Bool
	b := bus.New(func(next bus.Handler) bus.Handler {
		return func(ctx context.Context, cmd any) error {
			ran.Store(true)
			return next(ctx, cmd)
		}
	})
	require.ErrorIs(t, b.Dispatch(context.Background(), nil), bus.ErrNilCommand)
	require.ErrorIs(t, b.Dispatch(context.Background(), placeOrder{}), bus.ErrNoHandler)
	require.False(t, ran.Load(), "middleware runs only for commands that have a handler")
}

func TestDispatchNoHandler(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := bus.New()
	require.NoError(t, bus.Register(b, func(context.Context, placeOrder) error { return nil }))
	require.NoError(t, bus.Register(b, func(context.Context, *cancelOrder) error { return nil }))

	t.Run("unknown type", func(t *testing.T) {
		t.Parallel()
		err := b.Dispatch(ctx, shipOrder{ID: "o-1"})
		require.ErrorIs(t, err, bus.ErrNoHandler)
		require.ErrorContains(t, err, "bus_test.shipOrder")
		require.NotContains(t, err.Error(), "dispatch that form", "no hint without a handler for the other form")
	})
	t.Run("pointer of value handler", func(t *testing.T) {
		t.Parallel()
		err := b.Dispatch(ctx, &placeOrder{ID: "o-1"})
		require.ErrorIs(t, err, bus.ErrNoHandler)
		msg := err.Error()
		require.Contains(t, msg, "*bus_test.placeOrder")
		require.Contains(t, msg, "a handler is registered for bus_test.placeOrder")
		require.Contains(t, msg, "dispatch that form")
	})
	t.Run("value of pointer handler", func(t *testing.T) {
		t.Parallel()
		err := b.Dispatch(ctx, cancelOrder{ID: "o-1"})
		require.ErrorIs(t, err, bus.ErrNoHandler)
		msg := err.Error()
		require.True(t, strings.HasSuffix(msg, "(a handler is registered for *bus_test.cancelOrder; dispatch that form)"), msg)
		require.Contains(t, msg, "for bus_test.cancelOrder")
	})
}

// recorder is middleware that logs entering and leaving under a name.
type recorder struct {
	mu  sync.Mutex
	log []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, s)
}

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = nil
}

func (r *recorder) entries() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.log...)
}

func (r *recorder) mw(name string) bus.Middleware {
	return func(next bus.Handler) bus.Handler {
		return func(ctx context.Context, cmd any) error {
			r.add(name + ">")
			err := next(ctx, cmd)
			r.add("<" + name)
			return err
		}
	}
}

func TestMiddlewareOrder(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	// The order documented in bus/doc.go: bus middleware in the order it
	// was added (first outermost), then per-handler middleware (first
	// outermost), then the handler.
	b := bus.New(rec.mw("A"), nil, rec.mw("B"))
	require.NoError(t, bus.Register(b, func(context.Context, placeOrder) error {
		rec.add("h")
		return nil
	}, rec.mw("C"), rec.mw("D")))

	require.NoError(t, b.Dispatch(context.Background(), placeOrder{}))
	require.Equal(t, []string{"A>", "B>", "C>", "D>", "h", "<D", "<C", "<B", "<A"}, rec.entries())

	// Use after Register applies to the already registered handler, as the
	// innermost bus middleware: still outside the per-handler middleware.
	b.Use(rec.mw("E"), nil)
	rec.reset()
	require.NoError(t, b.Dispatch(context.Background(), placeOrder{}))
	require.Equal(t, []string{"A>", "B>", "E>", "C>", "D>", "h", "<D", "<C", "<E", "<B", "<A"}, rec.entries())
}

func TestPerHandlerMiddlewareOnlyWrapsItsHandler(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	b := bus.New(rec.mw("bus"))
	require.NoError(t, bus.Register(b, func(context.Context, placeOrder) error {
		rec.add("place")
		return nil
	}, rec.mw("own")))
	require.NoError(t, bus.Register(b, func(context.Context, cancelOrder) error {
		rec.add("cancel")
		return nil
	}))

	require.NoError(t, b.Dispatch(context.Background(), cancelOrder{}))
	require.Equal(t, []string{"bus>", "cancel", "<bus"}, rec.entries())
}

func TestMiddlewareSeesCommandAndCanStopIt(t *testing.T) {
	t.Parallel()
	errDenied := errors.New("denied")
	type key struct{}
	var handled []string
	b := bus.New(func(next bus.Handler) bus.Handler {
		return func(ctx context.Context, cmd any) error {
			if c, ok := cmd.(placeOrder); ok && c.ID == "forbidden" {
				return errDenied
			}
			return next(context.WithValue(ctx, key{}, "from-mw"), cmd)
		}
	})
	require.NoError(t, bus.Register(b, func(ctx context.Context, cmd placeOrder) error {
		handled = append(handled, cmd.ID+":"+ctx.Value(key{}).(string))
		return nil
	}))

	require.ErrorIs(t, b.Dispatch(context.Background(), placeOrder{ID: "forbidden"}), errDenied)
	require.NoError(t, b.Dispatch(context.Background(), placeOrder{ID: "ok"}))
	require.Equal(t, []string{"ok:from-mw"}, handled)
}

func TestNestedDispatch(t *testing.T) {
	t.Parallel()
	type depthKey struct{}
	rec := &recorder{}
	b := bus.New(func(next bus.Handler) bus.Handler {
		return func(ctx context.Context, cmd any) error {
			depth, _ := ctx.Value(depthKey{}).(int)
			rec.add(fmt.Sprintf("mw%d %T>", depth, cmd))
			return next(context.WithValue(ctx, depthKey{}, depth+1), cmd)
		}
	})
	errInner := errors.New("inner failed")
	require.NoError(t, bus.Register(b, func(ctx context.Context, cmd placeOrder) error {
		rec.add("place " + cmd.ID)
		if err := b.Dispatch(ctx, shipOrder{ID: cmd.ID}); err != nil {
			return fmt.Errorf("ship: %w", err)
		}
		return b.Dispatch(ctx, cancelOrder{ID: cmd.ID})
	}))
	require.NoError(t, bus.Register(b, func(ctx context.Context, cmd shipOrder) error {
		rec.add("ship " + cmd.ID)
		return nil
	}))
	require.NoError(t, bus.Register(b, func(ctx context.Context, cmd cancelOrder) error {
		rec.add("cancel " + cmd.ID)
		return errInner
	}))

	err := b.Dispatch(context.Background(), placeOrder{ID: "o-1"})
	require.ErrorIs(t, err, errInner)
	require.Equal(t, []string{
		"mw0 bus_test.placeOrder>",
		"place o-1",
		"mw1 bus_test.shipOrder>",
		"ship o-1",
		"mw1 bus_test.cancelOrder>",
		"cancel o-1",
	}, rec.entries())
}

// Distinct command types for the concurrency test.
type (
	c0 struct{ n int }
	c1 struct{ n int }
	c2 struct{ n int }
	c3 struct{ n int }
	c4 struct{ n int }
	c5 struct{ n int }
	c6 struct{ n int }
	c7 struct{ n int }
)

func TestConcurrentRegisterUseDispatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var mwCalls atomic.Int64
	countMW := func(next bus.Handler) bus.Handler {
		return func(ctx context.Context, cmd any) error {
			mwCalls.Add(1)
			return next(ctx, cmd)
		}
	}
	b := bus.New(countMW)
	var handled atomic.Int64
	require.NoError(t, bus.Register(b, func(context.Context, placeOrder) error {
		handled.Add(1)
		return nil
	}))

	var registers []func() error
	var dispatches []func() error
	add := func(reg func() error, dispatch func() error) {
		registers = append(registers, reg)
		dispatches = append(dispatches, dispatch)
	}
	h0 := func(context.Context, c0) error { handled.Add(1); return nil }
	h1 := func(context.Context, c1) error { handled.Add(1); return nil }
	h2 := func(context.Context, c2) error { handled.Add(1); return nil }
	h3 := func(context.Context, c3) error { handled.Add(1); return nil }
	h4 := func(context.Context, c4) error { handled.Add(1); return nil }
	h5 := func(context.Context, c5) error { handled.Add(1); return nil }
	h6 := func(context.Context, c6) error { handled.Add(1); return nil }
	h7 := func(context.Context, c7) error { handled.Add(1); return nil }
	add(func() error { return bus.Register(b, h0) }, func() error { return b.Dispatch(ctx, c0{}) })
	add(func() error { return bus.Register(b, h1) }, func() error { return b.Dispatch(ctx, c1{}) })
	add(func() error { return bus.Register(b, h2) }, func() error { return b.Dispatch(ctx, c2{}) })
	add(func() error { return bus.Register(b, h3) }, func() error { return b.Dispatch(ctx, c3{}) })
	add(func() error { return bus.Register(b, h4) }, func() error { return b.Dispatch(ctx, c4{}) })
	add(func() error { return bus.Register(b, h5) }, func() error { return b.Dispatch(ctx, c5{}) })
	add(func() error { return bus.Register(b, h6) }, func() error { return b.Dispatch(ctx, c6{}) })
	add(func() error { return bus.Register(b, h7) }, func() error { return b.Dispatch(ctx, c7{}) })

	const rounds = 200
	var (
		wg         sync.WaitGroup
		start      = make(chan struct{})
		dupErrs    atomic.Int64
		successes  atomic.Int64
		noHandlers atomic.Int64
		unexpected = make(chan error, 1000)
	)
	for i := range registers {
		// Two goroutines race to register each type: exactly one wins.
		for range 2 {
			wg.Go(func() {
				<-start
				err := registers[i]()
				switch {
				case err == nil:
				case errors.Is(err, bus.ErrDuplicateHandler):
					dupErrs.Add(1)
				default:
					unexpected <- err
				}
			})
		}
		wg.Go(func() {
			<-start
			for range rounds {
				err := dispatches[i]()
				switch {
				case err == nil:
					successes.Add(1)
				case errors.Is(err, bus.ErrNoHandler):
					noHandlers.Add(1)
				default:
					unexpected <- err
				}
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			<-start
			for range rounds {
				if err := b.Dispatch(ctx, placeOrder{}); err != nil {
					unexpected <- err
				}
			}
		})
	}
	wg.Go(func() {
		<-start
		for range 20 {
			b.Use(func(next bus.Handler) bus.Handler { return next })
		}
	})
	close(start)
	wg.Wait()
	close(unexpected)
	for err := range unexpected {
		require.NoError(t, err)
	}

	require.Equal(t, int64(len(registers)), dupErrs.Load(), "each type is registered exactly once")
	require.Equal(t, int64(len(registers)*rounds), successes.Load()+noHandlers.Load())
	require.Equal(t, successes.Load()+4*rounds, handled.Load())
	require.Equal(t, handled.Load(), mwCalls.Load())

	// After the dust settles every type dispatches.
	for _, d := range dispatches {
		require.NoError(t, d())
	}
}

// Bus middleware wraps each handler once, not per command, and again
// after Use changes the middleware.
func TestMiddlewareWrapsOnce(t *testing.T) {
	t.Parallel()
	wraps := map[string]int{}
	var mu sync.Mutex
	counting := func(name string) bus.Middleware {
		return func(next bus.Handler) bus.Handler {
			mu.Lock()
			wraps[name]++
			mu.Unlock()
			return next
		}
	}
	b := bus.New(counting("A"))
	require.NoError(t, bus.Register(b, func(context.Context, placeOrder) error { return nil }))
	require.NoError(t, bus.Register(b, func(context.Context, cancelOrder) error { return nil }))
	ctx := context.Background()
	for range 5 {
		require.NoError(t, b.Dispatch(ctx, placeOrder{}))
		require.NoError(t, b.Dispatch(ctx, cancelOrder{}))
	}
	require.Equal(t, map[string]int{"A": 2}, wraps, "once per handler")

	b.Use(counting("B"))
	for range 5 {
		require.NoError(t, b.Dispatch(ctx, placeOrder{}))
	}
	require.Equal(t, map[string]int{"A": 3, "B": 1}, wraps, "Use wraps again, at the next Dispatch")
}

// BenchmarkDispatch measures the bus's own cost per command: one bus
// middleware, one handler.
func BenchmarkDispatch(b *testing.B) {
	mw := func(next bus.Handler) bus.Handler {
		return func(ctx context.Context, cmd any) error { return next(ctx, cmd) }
	}
	cb := bus.New(mw)
	if err := bus.Register(cb, func(context.Context, placeOrder) error { return nil }); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	cmd := placeOrder{ID: "o-1"}
	b.ReportAllocs()
	for b.Loop() {
		if err := cb.Dispatch(ctx, cmd); err != nil {
			b.Fatal(err)
		}
	}
}
