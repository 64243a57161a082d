package inbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// DefaultTable is the default inbox table name.
const DefaultTable = "txoutbox_inbox"

// DefaultRetention is a conservative retention window for Cleanup: a week,
// far longer than brokers and the outbox forwarder take to redeliver.
const DefaultRetention = 7 * 24 * time.Hour

// DefaultCleanupBatch is the number of rows Cleanup deletes per statement
// when it is given a batch of 0.
const DefaultCleanupBatch = 1000

// Errors returned by this package. They are wrapped with details; compare
// with errors.Is.
var (
	// ErrInvalidConfig wraps every Config problem and invalid argument.
	ErrInvalidConfig = errors.New("inbox: invalid config")
	// ErrUnsupportedDialect is returned for a GORM dialect other than
	// postgres, mysql (MySQL and MariaDB) or sqlite.
	ErrUnsupportedDialect = errors.New("inbox: unsupported database (use gorm.io/driver/postgres, gorm.io/driver/mysql or github.com/glebarez/sqlite)")
	// ErrNoConsumer is returned when a message is processed without a
	// consumer name: Process with "", or Middleware("") outside a Watermill
	// router handler.
	ErrNoConsumer = errors.New("inbox: no consumer name")
	// ErrNoMessageUUID is returned for a message without a UUID, which
	// cannot be deduplicated.
	ErrNoMessageUUID = errors.New("inbox: message has no UUID, so it cannot be deduplicated")
)

// Config configures an [Inbox]. The zero value is valid.
type Config struct {
	// Table is the inbox table, optionally schema-qualified ("app.inbox",
	// PostgreSQL and MySQL, where the schema is a database). Each part
	// must be a plain SQL identifier. Optional; default DefaultTable
	// ("txoutbox_inbox").
	Table string
	// Logger receives a debug entry for each duplicate the middleware acks.
	// Optional; default slog.Default().
	Logger *slog.Logger
	// Now returns the time recorded as received_at and the clock Cleanup
	// measures age with. Optional; default time.Now.
	Now func() time.Time
}

// Validate reports every problem with the config.
func (c Config) Validate() error {
	_, err := parseTableName(cmp.Or(c.Table, DefaultTable))
	return err
}

// Inbox is the consumer-side inbox table: one row per (consumer, message
// UUID) processed. It is safe for concurrent use.
type Inbox struct {
	db    *gorm.DB
	cfg   Config
	drv   driver
	table sqlschema.Table
	// failed is the failed table, the inbox table's name + "_failed".
	failed sqlschema.Table
	sql    statements
}

// New returns an inbox on db's database. db selects the dialect and runs
// the transactions of Process, Cleanup and Migrate.
func New(db *gorm.DB, cfg Config) (*Inbox, error) {
	if db == nil || db.Config == nil || db.Dialector == nil {
		return nil, fmt.Errorf("%w: nil or unopened *gorm.DB (open one with gorm.Open)", ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t, _ := parseTableName(cmp.Or(cfg.Table, DefaultTable))
	d, _ := sqlschema.DialectOf(db)
	drv, ok := drivers[d]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedDialect, db.Dialector.Name())
	}
	if err := drv.checkTable(t); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	failed := sqlschema.Table{Schema: t.Schema, Name: t.Name + failedSuffix}
	stmts, err := newStatements(drv, t, failed)
	if err != nil {
		return nil, err
	}
	return &Inbox{db: db, cfg: cfg, drv: drv, table: t, failed: failed, sql: stmts}, nil
}

// Table returns the inbox table name as configured.
func (in *Inbox) Table() string { return in.table.String() }

// Process commits fn's work at most once per consumer and message UUID, as
// long as the inbox row is kept (see Cleanup).
//
// In one transaction it inserts the row (consumer, messageUUID, now). If the
// row already exists the message was processed before: fn is not called and
// Process returns duplicate == true and a nil error, so the caller acks the
// message. Otherwise fn runs with the transaction in its context (reach it
// with outbox.Tx; commands dispatched with the context join it, their
// events included), and the row and fn's writes commit together. If fn
// fails, everything is rolled back, nothing is recorded, and fn's error is
// returned unchanged, so the message can be redelivered and processed again.
//
// The primary key decides races: when two deliveries of the same message
// are processed at once, the second insert waits for the first transaction
// and finds the row once it commits (or inserts it if it rolls back), so fn
// commits once. When ctx already carries a transaction (outbox.WithTx),
// Process joins it in a savepoint and the row commits with it.
func (in *Inbox) Process(ctx context.Context, consumer, messageUUID string, fn func(ctx context.Context) error) (duplicate bool, err error) {
	if consumer == "" {
		return false, fmt.Errorf("%w for message %s", ErrNoConsumer, messageUUID)
	}
	if messageUUID == "" {
		return false, fmt.Errorf("%w (consumer %s)", ErrNoMessageUUID, consumer)
	}
	if fn == nil {
		return false, fmt.Errorf("%w: nil function for consumer %s", ErrInvalidConfig, consumer)
	}
	run := func(tx *gorm.DB) error {
		fresh, err := in.drv.record(tx, &in.sql, consumer, []string{messageUUID}, in.drv.timeArg(in.cfg.Now()))
		if err != nil {
			return fmt.Errorf("inbox: record message %s for consumer %s in %s: %w", messageUUID, consumer, in.table, err)
		}
		if len(fresh) == 0 {
			duplicate = true
			return nil
		}
		return fn(outbox.WithTx(ctx, tx))
	}
	if parent, txErr := outbox.Tx(ctx); txErr == nil {
		err = parent.Transaction(run)
	} else {
		err = in.db.WithContext(ctx).Transaction(run)
	}
	if err != nil {
		return false, err
	}
	return duplicate, nil
}

// Middleware returns a Watermill handler middleware that processes each
// message through [Inbox.Process] as consumer, keyed by the message UUID.
// The handler runs with the transaction in the message's context
// (outbox.Tx(msg.Context())) and its database writes commit with the
// inbox row; a message processed before is acked without running the
// handler (the middleware returns nil, nil). A handler error rolls back,
// records nothing and is returned, so the router nacks the message. After
// the handler the message gets its original context back.
//
// consumer names the consumer in the inbox: give every logical consumer
// its own, stable name, the same in all its instances. An empty consumer
// means the Watermill router handler's name (message.HandlerNameFromCtx),
// so router.AddMiddleware(in.Middleware("")) deduplicates each handler on
// its own; renaming a handler then starts it with an empty inbox.
//
// Messages a handler returns are published by the router after the
// transaction commits: a crash in between loses them, because the
// redelivered message is acked as a duplicate. To publish exactly once per
// processed message, write the messages into the outbox from inside the
// handler (dispatch a command with msg.Context(), or publish through a
// gormstore.Publisher messages whose context is msg.Context()).
func (in *Inbox) Middleware(consumer string) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			orig := msg.Context()
			defer msg.SetContext(orig)
			name := consumer
			if name == "" {
				name = message.HandlerNameFromCtx(orig)
			}
			var out []*message.Message
			dup, err := in.Process(orig, name, msg.UUID, func(ctx context.Context) error {
				msg.SetContext(ctx)
				var err error
				out, err = h(msg)
				return err
			})
			if err != nil {
				return nil, err
			}
			if dup {
				in.cfg.Logger.Debug("inbox: acked a duplicate message", "message_uuid", msg.UUID, "consumer", name)
				return nil, nil
			}
			return out, nil
		}
	}
}

// Cleanup deletes the inbox rows received more than olderThan ago, batch
// rows per statement (0 means DefaultCleanupBatch), each statement in its
// own short transaction so it never holds many locks or blocks consumers
// for long. It returns the number of rows deleted and stops at the first
// error or when ctx is done.
//
// A message redelivered after its row was deleted is processed again, so
// olderThan must exceed the longest time a duplicate can arrive after the
// original: the broker's redelivery window and the outbox forwarder's (a
// parked outbox event released days later is published again with the same
// UUID). Run Cleanup periodically, from one or several instances.
func (in *Inbox) Cleanup(ctx context.Context, olderThan time.Duration, batch int) (int64, error) {
	if olderThan <= 0 {
		return 0, fmt.Errorf("%w: Cleanup olderThan %v must be positive", ErrInvalidConfig, olderThan)
	}
	if batch < 0 {
		return 0, fmt.Errorf("%w: Cleanup batch %d is negative (use 0 for the default %d)", ErrInvalidConfig, batch, DefaultCleanupBatch)
	}
	batch = cmp.Or(batch, DefaultCleanupBatch)
	cutoff := in.drv.timeArg(in.cfg.Now().Add(-olderThan))
	db := in.db.WithContext(ctx)
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := in.drv.cleanup(db, &in.sql, cutoff, batch)
		if err != nil {
			return total, fmt.Errorf("inbox: clean up %s: %w", in.table, err)
		}
		total += n
		if n < int64(batch) {
			return total, nil
		}
	}
}

// CountCleanup counts the inbox rows received more than olderThan ago: the
// rows Cleanup(ctx, olderThan, ...) would delete now, by the same clock. It
// deletes nothing.
func (in *Inbox) CountCleanup(ctx context.Context, olderThan time.Duration) (int64, error) {
	if olderThan <= 0 {
		return 0, fmt.Errorf("%w: Cleanup olderThan %v must be positive", ErrInvalidConfig, olderThan)
	}
	var n int64
	err := in.db.WithContext(ctx).Raw(in.sql.countCleanup, in.drv.timeArg(in.cfg.Now().Add(-olderThan))).Scan(&n).Error
	if err != nil {
		return 0, fmt.Errorf("inbox: count %s: %w", in.table, err)
	}
	return n, nil
}
