package middleware_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// Events used by the tests.

// OrderPlaced has a partition key and the default topic ("OrderPlaced").
type OrderPlaced struct {
	OrderID string `json:"order_id"`
	Amount  int    `json:"amount"`
}

func (e OrderPlaced) PartitionKey() string { return e.OrderID }

// OrderShipped has neither partition key nor topic method.
type OrderShipped struct {
	OrderID string `json:"order_id"`
}

// AuditLogged has its own topic.
type AuditLogged struct {
	Seq int `json:"seq"`
}

func (AuditLogged) Topic() string { return "audit" }

// Commands used by the tests.

// PlaceOrder is a command with a name of its own.
type PlaceOrder struct {
	OrderID string
	Amount  int
}

// ReserveStock is dispatched by PlaceOrder handlers in nested tests.
type ReserveStock struct {
	OrderID string
}

// do runs fn as a command's handler: one command type for tests that need
// an ad-hoc handler.
type do struct {
	fn func(ctx context.Context) error
}

// fixture is one isolated database with the outbox and a business table
// (orders) migrated, and a bus whose handlers run under Transactional.
type fixture struct {
	dialect testdb.Dialect
	db      *gorm.DB
	store   *gormstore.Store
	tm      *middleware.Transactional
	bus     *bus.Bus
}

type fixtureOptions struct {
	config func(*middleware.TransactionalConfig)
	// outer is bus middleware placed before (outside) Transactional.
	outer []bus.Middleware
}

type fixtureOption func(*fixtureOptions)

func withConfig(f func(*middleware.TransactionalConfig)) fixtureOption {
	return func(o *fixtureOptions) { o.config = f }
}

func withOuter(mw ...bus.Middleware) fixtureOption {
	return func(o *fixtureOptions) { o.outer = append(o.outer, mw...) }
}

const ordersDDL = `CREATE TABLE orders (
	id     VARCHAR(64) PRIMARY KEY,
	amount INTEGER NOT NULL
)`

func newFixture(t testing.TB, d testdb.Dialect, opts ...fixtureOption) *fixture {
	t.Helper()
	return newFixtureOn(t, d, testdb.Open(t, d), opts...)
}

func newFixtureOn(t testing.TB, d testdb.Dialect, db *gorm.DB, opts ...fixtureOption) *fixture {
	t.Helper()
	var o fixtureOptions
	for _, opt := range opts {
		opt(&o)
	}
	ctx := context.Background()
	require.NoError(t, gormstore.Migrate(ctx, db))
	require.NoError(t, db.Exec(ordersDDL).Error)

	store, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)
	cfg := middleware.TransactionalConfig{
		DB:           db,
		Store:        store,
		RetryBackoff: time.Millisecond,
	}
	if o.config != nil {
		o.config(&cfg)
	}
	tm, err := middleware.NewTransactional(cfg)
	require.NoError(t, err)

	b := bus.New(append(o.outer, tm.Middleware())...)
	require.NoError(t, bus.Register(b, func(ctx context.Context, cmd do) error {
		return cmd.fn(ctx)
	}))
	return &fixture{dialect: d, db: db, store: store, tm: tm, bus: b}
}

// run dispatches fn as the handler of a do command.
func (f *fixture) run(ctx context.Context, fn func(ctx context.Context) error) error {
	return f.bus.Dispatch(ctx, do{fn: fn})
}

// eachDialect runs fn as a parallel subtest per dialect. Unlike testdb.Each
// it opens nothing before t.Parallel, so waiting subtests hold no
// connections.
func eachDialect(t *testing.T, fn func(t *testing.T, d testdb.Dialect)) {
	t.Helper()
	for _, d := range testdb.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			fn(t, d)
		})
	}
}

// insertOrder writes a business row through the command's transaction.
func insertOrder(ctx context.Context, id string, amount int) error {
	tx, err := outbox.Tx(ctx)
	if err != nil {
		return err
	}
	return tx.Exec("INSERT INTO orders (id, amount) VALUES (?, ?)", id, amount).Error
}

// outboxRow is one row of the outbox table as the tests read it back.
type outboxRow struct {
	ID           int64
	UUID         string
	Topic        string
	PartitionKey string
	Payload      []byte
	Metadata     string
}

func (r outboxRow) meta(t testing.TB) map[string]string {
	t.Helper()
	var m map[string]string
	require.NoError(t, json.Unmarshal([]byte(r.Metadata), &m), "metadata %q", r.Metadata)
	return m
}

// payloadField decodes the payload and returns one of its string fields.
func (r outboxRow) payloadField(t testing.TB, field string) string {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.Payload, &m), "payload %q", r.Payload)
	s, _ := m[field].(string)
	return s
}

func readOutbox(t testing.TB, db *gorm.DB) []outboxRow {
	t.Helper()
	var rows []outboxRow
	require.NoError(t, db.Raw(
		"SELECT id, uuid, topic, partition_key, payload, metadata FROM "+gormstore.DefaultTable+" ORDER BY id",
	).Scan(&rows).Error)
	return rows
}

func (f *fixture) outbox(t testing.TB) []outboxRow { t.Helper(); return readOutbox(t, f.db) }

func (f *fixture) outboxCount(t testing.TB) int64 {
	t.Helper()
	return testdb.Count(t, f.db, gormstore.DefaultTable, "")
}

func (f *fixture) orderCount(t testing.TB, where string, args ...any) int64 {
	t.Helper()
	return testdb.Count(t, f.db, "orders", where, args...)
}

// requireNothingSaved checks that neither the outbox nor orders has a row.
func (f *fixture) requireNothingSaved(t testing.TB) {
	t.Helper()
	require.Zero(t, f.outboxCount(t), "outbox rows")
	require.Zero(t, f.orderCount(t, ""), "order rows")
}

// commandOf returns the command the handler running in ctx belongs to.
func commandOf(t testing.TB, ctx context.Context) outbox.Command {
	t.Helper()
	_, cmd, ok := outbox.CollectorFrom(ctx)
	require.True(t, ok, "no command in context")
	return cmd
}

func requireUUIDv7(t testing.TB, s string) {
	t.Helper()
	id, err := uuid.Parse(s)
	require.NoError(t, err)
	require.Equal(t, uuid.Version(7), id.Version(), "message UUID %s", s)
}
