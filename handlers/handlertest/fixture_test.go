package handlertest_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// The domain of the tests.

type PlaceOrder struct {
	OrderID string
	Amount  int
}

type ReserveStock struct {
	OrderID string
}

type OrderPlaced struct {
	OrderID string `json:"order_id"`
	Amount  int    `json:"amount"`
}

func (e OrderPlaced) PartitionKey() string { return "order-" + e.OrderID }

type OrderCancelled struct {
	OrderID string `json:"order_id"`
}

type StockReserved struct {
	OrderID string `json:"order_id"`
}

type AuditLogged struct {
	What string `json:"what"`
}

func (AuditLogged) Topic() string { return "audit" }

// Unmarshalable cannot be encoded as JSON.
type Unmarshalable struct {
	Callback func() `json:"callback"`
}

const ordersDDL = `CREATE TABLE orders (
	id     VARCHAR(64) PRIMARY KEY,
	amount INTEGER NOT NULL
)`

// openDB returns a database of dialect d with the outbox and the orders
// table.
func openDB(t *testing.T, d testdb.Dialect) *gorm.DB {
	t.Helper()
	db := testdb.Open(t, d)
	require.NoError(t, gormstore.Migrate(context.Background(), db))
	require.NoError(t, db.Exec(ordersDDL).Error)
	return db
}

// placeOrder writes the order and emits OrderPlaced and AuditLogged.
func placeOrder(ctx context.Context, cmd PlaceOrder) error {
	tx, err := outbox.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Exec("INSERT INTO orders (id, amount) VALUES (?, ?)", cmd.OrderID, cmd.Amount).Error; err != nil {
		return err
	}
	return outbox.Emit(ctx, OrderPlaced{OrderID: cmd.OrderID, Amount: cmd.Amount}, AuditLogged{What: "placed " + cmd.OrderID})
}

// fakeTB stands in for the inner test whose failure a test of the kit
// expects. It records failures; Fatalf and FailNow end the calling
// goroutine with runtime.Goexit, as testing.T does, so run the inner test
// with runInner.
type fakeTB struct {
	testing.TB // the real test: Context, TempDir, Name
	mu         sync.Mutex
	failures   []string
	cleanups   []func()
}

func (f *fakeTB) Helper() {}

// Cleanup registers f to run when the inner test ends, as testing.T does.
func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

func (f *fakeTB) fail(msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = append(f.failures, msg)
}

func (f *fakeTB) Errorf(format string, args ...any) { f.fail(fmt.Sprintf(format, args...)) }
func (f *fakeTB) Error(args ...any)                 { f.fail(fmt.Sprint(args...)) }
func (f *fakeTB) Fail()                             { f.fail("Fail") }
func (f *fakeTB) Failed() bool                      { f.mu.Lock(); defer f.mu.Unlock(); return len(f.failures) > 0 }
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fail(fmt.Sprintf(format, args...))
	runtime.Goexit()
}
func (f *fakeTB) Fatal(args ...any) { f.fail(fmt.Sprint(args...)); runtime.Goexit() }
func (f *fakeTB) FailNow()          { f.fail("FailNow"); runtime.Goexit() }

// inner is the outcome of an inner test.
type inner struct {
	failures []string
	finished bool // the body ran to its end (no Fatalf stopped it)
}

// runInner runs body as an inner test on a fake testing.TB, in a goroutine
// of its own so a Fatalf can stop it, runs its cleanups (rolling back its
// kits' transactions), and returns its failures.
func runInner(t *testing.T, body func(tb testing.TB)) inner {
	t.Helper()
	f := &fakeTB{TB: t}
	var res inner
	done := make(chan struct{})
	go func() {
		defer close(done)
		body(f)
		res.finished = true
	}()
	<-done
	f.mu.Lock()
	cleanups := f.cleanups
	f.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	res.failures = append([]string(nil), f.failures...)
	return res
}

// requireFailed checks that the inner test failed once and was stopped,
// with a message containing every part of want.
func requireFailed(t *testing.T, res inner, want ...string) {
	t.Helper()
	require.Len(t, res.failures, 1, "the kit fails the inner test once: %q", res.failures)
	require.False(t, res.finished, "the failing helper stops the inner test")
	for _, w := range want {
		require.Contains(t, res.failures[0], w)
	}
}

// requirePassed checks that the inner test ran to its end without failing.
func requirePassed(t *testing.T, res inner) {
	t.Helper()
	require.Empty(t, res.failures)
	require.True(t, res.finished)
}

// modes are the kit's modes the tests run in: no database, and each
// database.
var modes = []string{"nodb", string(testdb.Postgres), string(testdb.SQLite), string(testdb.MySQL)}

// eachMode runs f as a parallel subtest per mode with a database (nil
// without one).
func eachMode(t *testing.T, f func(t *testing.T, db *gorm.DB)) {
	t.Helper()
	for _, m := range modes {
		t.Run(m, func(t *testing.T) {
			t.Parallel()
			var db *gorm.DB
			if m != "nodb" {
				db = openDB(t, testdb.Dialect(m))
			}
			f(t, db)
		})
	}
}

// newMessage returns a message with a UUIDv7 and payload.
func newMessage(payload string) *message.Message {
	return message.NewMessage(outbox.NewUUID(), []byte(payload))
}
