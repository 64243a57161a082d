package handlertest

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// Config configures a [Kit]. The zero value is valid: a kit without a
// database.
type Config struct {
	// DB switches the kit to database mode: it begins one transaction on DB,
	// runs every command inside it (each in a savepoint, through the
	// production transactional middleware) and rolls it back when the test
	// ends. Optional; nil means no-database mode, for handlers that touch no
	// database.
	DB *gorm.DB
	// Store receives the events in database mode, inside the test's
	// transaction; the kit records what it is given. Optional; default
	// gormstore.New(DB, gormstore.Config{}), whose table must exist (run
	// gormstore.Migrate once, as in production). Ignored without DB.
	Store outbox.Store
	// Encoder turns events into messages, in both modes. Pass the one
	// production uses, so an event that cannot be marshaled fails the test
	// as it would fail the command. Optional; default
	// outbox.NewEncoder(outbox.EncoderConfig{}), the middleware's default.
	Encoder *outbox.Encoder
}

// Kit runs command handlers for one test and records what they emit. Create
// one per test with [New]. In database mode all its commands share the
// test's transaction, so a Kit must not be used by several goroutines at
// once (the handlers it runs may use goroutines, as in production).
type Kit struct {
	tb    testing.TB
	ctx   context.Context
	tx    *gorm.DB // nil in no-database mode
	enc   *outbox.Encoder
	store *recordingStore
	tm    *middleware.Transactional
}

// New returns a kit for tb. In database mode it begins the test's
// transaction and rolls it back in tb.Cleanup; it fails the test when the
// transaction cannot begin or the config is invalid.
func New(tb testing.TB, cfg Config) *Kit {
	tb.Helper()
	if cfg.Encoder == nil {
		cfg.Encoder = outbox.NewEncoder(outbox.EncoderConfig{})
	}
	k := &Kit{tb: tb, ctx: tb.Context(), enc: cfg.Encoder}
	if cfg.DB == nil {
		return k
	}
	if cfg.Store == nil {
		s, err := gormstore.New(cfg.DB, gormstore.Config{})
		if err != nil {
			tb.Fatalf("handlertest: %v", err)
			return nil
		}
		cfg.Store = s
	}
	k.store = &recordingStore{next: cfg.Store}
	tm, err := middleware.NewTransactional(middleware.TransactionalConfig{
		DB:      cfg.DB,
		Store:   k.store,
		Encoder: cfg.Encoder,
	})
	if err != nil {
		tb.Fatalf("handlertest: %v", err)
		return nil
	}
	k.tm = tm
	// Begun without the test's context: the rollback below ends it.
	tx := cfg.DB.WithContext(context.Background()).Begin()
	if tx.Error != nil {
		tb.Fatalf("handlertest: begin the test transaction: %v", tx.Error)
		return nil
	}
	tb.Cleanup(func() {
		if err := tx.Rollback().Error; err != nil && !errors.Is(err, sql.ErrTxDone) {
			tb.Errorf("handlertest: roll back the test transaction: %v", err)
		}
	})
	k.tx = tx
	k.ctx = outbox.WithTx(k.ctx, tx)
	return k
}

// Context returns the context commands run with. In database mode it
// carries the test's transaction: outbox.Tx(ctx) returns it, and code
// given this context joins it.
func (k *Kit) Context() context.Context { return k.ctx }

// Tx returns the test's transaction, for preparing data before a command
// and checking the handler's writes after it; everything is rolled back
// when the test ends. Without Config.DB it fails the test.
func (k *Kit) Tx() *gorm.DB {
	k.tb.Helper()
	if k.tx == nil {
		k.tb.Fatalf("handlertest: Tx needs a database (set handlertest.Config.DB)")
		return nil
	}
	return k.tx.WithContext(k.ctx)
}

// Run runs fn as one command named name (the command metadata of the
// events fn emits directly) and returns what it emitted.
//
// In database mode fn runs through middleware.Transactional inside a
// savepoint of the test's transaction, exactly as a command dispatched
// inside an application's transaction: its writes stay visible through
// [Kit.Tx] if it succeeds and are rolled back to the savepoint if it fails,
// and its events are encoded and saved through the Store. Commands fn
// dispatches through a bus with its own Transactional middleware join
// fn's command, as nested commands do, so their events are recorded too.
//
// Without a database fn runs with an outbox collector in its context and
// its events are encoded with the Encoder, as the middleware would before
// saving them.
func (k *Kit) Run(name string, fn func(ctx context.Context) error) *Recording {
	k.tb.Helper()
	rec := &Recording{marshaler: k.enc.Marshaler(), noDB: k.tx == nil}
	if fn == nil {
		k.tb.Fatalf("handlertest: Run(%q) with a nil function", name)
		return rec
	}
	if k.tx == nil {
		rec.records, rec.err = k.runWithoutDB(name, fn)
	} else {
		start := k.store.len()
		rec.err = k.tm.Run(k.ctx, name, fn)
		rec.records = k.store.since(start)
	}
	if rec.err != nil {
		rec.records = nil
	}
	return rec
}

// runWithoutDB does what the middleware does, minus the database.
func (k *Kit) runWithoutDB(name string, fn func(ctx context.Context) error) ([]outbox.Record, error) {
	cmd := outbox.Command{ID: outbox.NewUUID(), Name: name, CorrelationID: outbox.CorrelationID(k.ctx)}
	if cmd.CorrelationID == "" {
		cmd.CorrelationID = cmd.ID
	}
	col := outbox.NewCollector(false)
	err := fn(outbox.WithCollector(k.ctx, col, cmd))
	col.Close()
	if err != nil {
		return nil, err
	}
	if err := col.Err(); err != nil {
		return nil, err
	}
	return k.enc.EncodeAll(col.Entries())
}

// Dispatch dispatches cmd on b as one command and returns what it emitted.
// b is usually the application's own bus, built with its production
// middleware; see [Kit.Run] for how its transactions and events are handled.
func (k *Kit) Dispatch(b *bus.Bus, cmd any) *Recording {
	k.tb.Helper()
	if b == nil {
		k.tb.Fatalf("handlertest: Dispatch on a nil bus")
		return &Recording{marshaler: k.enc.Marshaler()}
	}
	return k.Run(commandName(cmd), func(ctx context.Context) error { return b.Dispatch(ctx, cmd) })
}

// Call runs the handler h with cmd as one command, named like the
// middleware names it (cqrs.StructName), and returns what it emitted.
func Call[C any](k *Kit, h bus.HandlerFunc[C], cmd C) *Recording {
	k.tb.Helper()
	if h == nil {
		k.tb.Fatalf("handlertest: Call with a nil handler")
		return &Recording{marshaler: k.enc.Marshaler()}
	}
	return k.Run(commandName(cmd), func(ctx context.Context) error { return h(ctx, cmd) })
}

func commandName(cmd any) string {
	if cmd == nil {
		return "<nil>"
	}
	return cqrs.StructName(cmd)
}

// recordingStore records the records saved through it, after the real
// store accepted them.
type recordingStore struct {
	next    outbox.Store
	mu      sync.Mutex
	records []outbox.Record
}

func (s *recordingStore) Save(ctx context.Context, tx *gorm.DB, records []outbox.Record) error {
	if err := s.next.Save(ctx, tx, records); err != nil {
		return err
	}
	s.mu.Lock()
	s.records = append(s.records, records...)
	s.mu.Unlock()
	return nil
}

func (s *recordingStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}

func (s *recordingStore) since(start int) []outbox.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]outbox.Record(nil), s.records[start:]...)
}
