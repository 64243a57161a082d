package gormstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// DefaultTable is the default outbox table name.
const DefaultTable = "txoutbox_outbox"

// Errors returned by this package's constructors and methods.
var (
	// ErrInvalidConfig wraps every Config problem.
	ErrInvalidConfig = errors.New("gormstore: invalid config")
	// ErrValueTooLong is returned by Save for a record whose message UUID,
	// topic or partition key is wider than its column (MySQL: 255, 1,024
	// and 1,024 bytes); nothing is saved.
	ErrValueTooLong = errors.New("gormstore: value too long for its column")
	// ErrUnsupportedDialect is returned for a GORM dialect other than
	// postgres, sqlite or mysql.
	ErrUnsupportedDialect = errors.New("gormstore: unsupported database (use gorm.io/driver/postgres, github.com/glebarez/sqlite or gorm.io/driver/mysql)")
)

// errSaveOutsideTx is returned by Save for a *gorm.DB that is not a
// transaction.
var errSaveOutsideTx = fmt.Errorf("%w: Save needs the command's transaction, got a plain *gorm.DB", outbox.ErrNoTransaction)

// Config configures a [Store]. The zero value is valid.
type Config struct {
	// Table is the outbox table, optionally qualified ("app.outbox": a
	// schema on PostgreSQL, a database on MySQL; not on SQLite). Each part
	// must be a plain SQL identifier.
	// Optional; default DefaultTable ("txoutbox_outbox").
	Table string
	// KeepDelivered keeps delivered rows, with their delivered_at time, for
	// audit or replay, instead of deleting them at delivery. Remove them
	// with Store.PurgeDeliveredBatch (package retention runs it). Claims
	// stay fast with millions of kept rows: they read only undelivered rows
	// from indexes (partial ones on PostgreSQL and SQLite, led by
	// delivered_at on MySQL).
	// Optional; default false (delete at delivery).
	KeepDelivered bool
	// NoNotify stops the PostgreSQL store from sending a NOTIFY on the
	// table's channel after a transaction that saved rows commits.
	// Forwarders in other processes then find new rows by polling.
	// Optional; default false.
	NoNotify bool
	// NoPipeline makes the PostgreSQL store run each command's transaction
	// as a GORM transaction on a *sql.Tx (db.Transaction), with the INSERT
	// of its events as a statement of its own before the COMMIT. By
	// default the transactional middleware asks the store to run the
	// transaction (Store.RunTx), and on PostgreSQL through pgx the store
	// runs it on a connection held for the command and sends the INSERT
	// with the COMMIT in one round trip. The handler's *gorm.DB then has
	// no *sql.Tx behind it: SQLTx fails, and so do libraries that need
	// one (watermill-sql's publisher on the command's transaction), and
	// prepared statements (gorm.Session{PrepareStmt: true}) fail the
	// command. Set NoPipeline for handlers that need those. Other
	// databases always run the GORM transaction. Optional; default false.
	NoPipeline bool
	// WAL, on PostgreSQL, writes each command's events as one logical
	// decoding message instead of table rows (see [WALConfig]); package
	// walrelay relays them. Save then needs wal_level=logical and the
	// replication slot, and sends no NOTIFY. Optional; default nil: the
	// events are table rows.
	WAL *WALConfig
}

// Validate reports every problem with the config.
func (c Config) Validate() error {
	_, err := parseTableName(cmp.Or(c.Table, DefaultTable))
	if c.WAL != nil {
		err = errors.Join(err, c.WAL.validate())
	}
	return err
}

// Store is the native outbox table. It implements outbox.Store and is safe
// for concurrent use.
type Store struct {
	db     *gorm.DB
	cfg    Config
	table  sqlschema.Table
	quoted string
	sql    statements // by name: sql/shared.sql and the driver's file
	drv    driver
	// wal is Config.WAL with its defaults, nil for table rows.
	wal *WALConfig
	// walReady is set once the WAL mode's database was found ready.
	walReady atomic.Bool
}

var _ outbox.Store = (*Store)(nil)

// New returns a store on db's database. db selects the database's driver
// and is used by Migrate; Save writes through the transaction it is given.
func New(db *gorm.DB, cfg Config) (*Store, error) {
	if db == nil || db.Config == nil || db.Dialector == nil {
		return nil, fmt.Errorf("%w: nil or unopened *gorm.DB (open one with gorm.Open)", ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t, _ := parseTableName(cmp.Or(cfg.Table, DefaultTable))
	d, _ := sqlschema.DialectOf(db)
	s := &Store{db: db, cfg: cfg, table: t, quoted: d.Quote(t)}
	if cfg.WAL != nil {
		if d != sqlschema.Postgres {
			return nil, fmt.Errorf("%w: the WAL mode (Config.WAL) needs PostgreSQL, not %s", ErrInvalidConfig, db.Dialector.Name())
		}
		w := cfg.WAL.withDefaults()
		s.wal = &w
	}
	drv, err := newDriver(s)
	if err != nil {
		return nil, err
	}
	s.drv = drv
	return s, nil
}

// Table returns the store's table name as configured.
func (s *Store) Table() string { return s.table.String() }

// saveChunk bounds the rows per INSERT statement, keeping the number of
// bound parameters well below the limits of both databases.
const saveChunk = 1000

// Save writes records with one multi-row INSERT (one per 1,000 records)
// inside tx, which must be a transaction: the records are committed or
// rolled back with it.
func (s *Store) Save(ctx context.Context, tx *gorm.DB, records []outbox.Record) error {
	if len(records) == 0 {
		return nil
	}
	if tx == nil || tx.Statement == nil {
		return errSaveOutsideTx
	}
	if _, ok := tx.Statement.ConnPool.(gorm.TxCommitter); !ok {
		return errSaveOutsideTx
	}
	if s.wal != nil {
		return s.emit(ctx, tx, records)
	}
	for len(records) > 0 {
		query, args, n, err := s.drv.insert(ctx, tx.Statement.ConnPool, records[:min(saveChunk, len(records))])
		if err != nil {
			return err
		}
		records = records[n:]
		if _, err := tx.Statement.ConnPool.ExecContext(ctx, query, args...); err != nil {
			return s.insertError(err)
		}
	}
	return nil
}

// insertError wraps the error of an INSERT into the table.
func (s *Store) insertError(err error) error {
	if s.drv.missingTable(err) {
		return fmt.Errorf("gormstore: insert into %s: %w (create the table first: gormstore.Migrate, Store.Migrate, or the CLI's \"txoutbox migrate\")", s.table, err)
	}
	return fmt.Errorf("gormstore: insert into %s: %w", s.table, err)
}

// Retryable reports whether err, from a transaction on the store's
// database, allows running the whole transaction again: on PostgreSQL a
// serialization failure (SQLSTATE 40001) or deadlock (40P01), also
// wrapped; on MySQL a deadlock (error 1213) or lock wait timeout (1205).
// SQLite waits for its lock (busy_timeout) instead and has no such
// error. The transactional middleware asks its Store
// (outbox.RetryClassifier) by default.
func (s *Store) Retryable(err error) bool { return s.drv.retryable(err) }
