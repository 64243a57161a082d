package gormstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
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
	// ErrUnsupportedDialect is returned for a GORM dialect other than
	// postgres or sqlite.
	ErrUnsupportedDialect = errors.New("gormstore: unsupported database (use gorm.io/driver/postgres or github.com/glebarez/sqlite)")
)

// errSaveOutsideTx is returned by Save for a *gorm.DB that is not a
// transaction.
var errSaveOutsideTx = fmt.Errorf("%w: Save needs the command's transaction, got a plain *gorm.DB", outbox.ErrNoTransaction)

// Config configures a [Store]. The zero value is valid.
type Config struct {
	// Table is the outbox table, optionally schema-qualified ("app.outbox",
	// PostgreSQL only). Each part must be a plain SQL identifier.
	// Optional; default DefaultTable ("txoutbox_outbox").
	Table string
	// KeepDelivered keeps delivered rows, with their delivered_at time, for
	// audit or replay, instead of deleting them at delivery. Remove them
	// with Store.PurgeDeliveredBatch (package retention runs it). Claims
	// stay fast with millions of kept rows: they read only a partial index
	// of undelivered rows.
	// Optional; default false (delete at delivery).
	KeepDelivered bool
	// NoNotify stops the PostgreSQL store from sending a NOTIFY on the
	// table's channel after a transaction that saved rows commits.
	// Forwarders in other processes then find new rows by polling.
	// Optional; default false.
	NoNotify bool
}

// Validate reports every problem with the config.
func (c Config) Validate() error {
	_, err := parseTableName(cmp.Or(c.Table, DefaultTable))
	return err
}

type dialect = sqlschema.Dialect

const (
	postgres = sqlschema.Postgres
	sqlite   = sqlschema.SQLite
)

// Store is the native outbox table. It implements outbox.Store and is safe
// for concurrent use.
type Store struct {
	db      *gorm.DB
	cfg     Config
	dialect dialect
	table   sqlschema.Table
	quoted  string
	relay   relaySQL
	pg      postgresState // used on PostgreSQL only
	lite    sqliteState   // used on SQLite only
}

// postgresState is what a store keeps between calls on PostgreSQL.
type postgresState struct {
	// picks caches the pick statement per limit (pickSQL).
	picks sync.Map
	// contendedUntil is when claims stop skipping keys held elsewhere
	// (unix nanoseconds; see heldElsewhere).
	contendedUntil atomic.Int64
	notify         notifier
	// channel caches channelName for an unqualified table.
	chanOnce sync.Mutex
	channel  string
}

// sqliteState is what a store keeps between calls on SQLite.
type sqliteState struct {
	// claims serialises claims: one claim at a time per store.
	claims chan struct{}
}

var _ outbox.Store = (*Store)(nil)

// New returns a store on db's database. db selects the dialect and is used
// by Migrate; Save writes through the transaction it is given.
func New(db *gorm.DB, cfg Config) (*Store, error) {
	if db == nil || db.Config == nil || db.Dialector == nil {
		return nil, fmt.Errorf("%w: nil or unopened *gorm.DB (open one with gorm.Open)", ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t, _ := parseTableName(cmp.Or(cfg.Table, DefaultTable))
	d, ok := sqlschema.DialectOf(db)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedDialect, db.Dialector.Name())
	}
	if d == sqlite && t.Schema != "" {
		return nil, fmt.Errorf("%w: table %q: SQLite tables cannot be schema-qualified", ErrInvalidConfig, t)
	}
	s := &Store{db: db, cfg: cfg, dialect: d, table: t, quoted: t.Quoted(), lite: sqliteState{claims: make(chan struct{}, 1)}}
	relay, err := newRelaySQL(s)
	if err != nil {
		return nil, err
	}
	s.relay = relay
	s.pg.notify.send = s.sendNotify
	return s, nil
}

// insertPostgres builds one INSERT with one array parameter per column: the
// statement text is the same for any number of rows, so pgx prepares it
// once per connection, and it binds 5 parameters instead of 5 per row.
func (s *Store) insertPostgres(records []outbox.Record) (string, []any, error) {
	n := len(records)
	uuids, topics, keys, mds := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	payloads := make([][]byte, n)
	var buf []byte
	for i, r := range records {
		if r.Message == nil {
			return "", nil, fmt.Errorf("gormstore: record %d has no message", i)
		}
		uuids[i], topics[i], keys[i] = r.Message.UUID, r.Topic, r.PartitionKey
		payloads[i] = []byte(r.Message.Payload)
		if payloads[i] == nil {
			payloads[i] = []byte{}
		}
		buf = appendMetadata(buf[:0], r.Message.Metadata)
		mds[i] = string(buf)
	}
	return "INSERT INTO " + s.quoted + ` (uuid, topic, partition_key, payload, metadata)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::jsonb[])`,
		[]any{uuids, topics, keys, payloads, mds}, nil
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
	for start := 0; start < len(records); start += saveChunk {
		end := min(start+saveChunk, len(records))
		query, args, err := s.insertSQL(records[start:end])
		if err != nil {
			return err
		}
		if _, err := tx.Statement.ConnPool.ExecContext(ctx, query, args...); err != nil {
			if missingTable(err) {
				return fmt.Errorf("gormstore: insert into %s: %w (create the table first: gormstore.Migrate, Store.Migrate, or the CLI's \"txoutbox migrate\")", s.table, err)
			}
			return fmt.Errorf("gormstore: insert into %s: %w", s.table, err)
		}
	}
	return nil
}

// Retryable reports whether err, from a transaction on the store's
// database, allows running the whole transaction again: a PostgreSQL
// serialization failure (SQLSTATE 40001) or deadlock (40P01), also wrapped.
// SQLite waits for its lock (busy_timeout) instead and has no such error.
// The transactional middleware asks its Store (outbox.RetryClassifier) by
// default.
func (s *Store) Retryable(err error) bool { return retryablePostgres(err) }

func retryablePostgres(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "40001" || pgErr.Code == "40P01"
	}
	return false
}

// missingTable tells an error of a statement on a table that does not
// exist: SQLSTATE 42P01 on PostgreSQL, "no such table" on SQLite.
func missingTable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "42P01"
	}
	return strings.Contains(err.Error(), "no such table")
}

func (s *Store) insertSQL(records []outbox.Record) (string, []any, error) {
	if s.dialect == postgres {
		return s.insertPostgres(records)
	}
	return s.insertSQLite(records)
}

// insertSQLite builds one multi-row INSERT. SQLite has no column default
// for the times, so they are set here, in UTC.
func (s *Store) insertSQLite(records []outbox.Record) (string, []any, error) {
	var b strings.Builder
	b.WriteString("INSERT INTO ")
	b.WriteString(s.quoted)
	b.WriteString(" (uuid, topic, partition_key, payload, metadata, created_at, next_attempt_at) VALUES ")
	args := make([]any, 0, len(records)*7)
	now := time.Now().UTC()
	for i, r := range records {
		if r.Message == nil {
			return "", nil, fmt.Errorf("gormstore: record %d has no message", i)
		}
		payload := []byte(r.Message.Payload)
		if payload == nil {
			payload = []byte{}
		}
		md := appendMetadata(nil, r.Message.Metadata) // never JSON null: "{}" when empty
		args = append(args, r.Message.UUID, r.Topic, r.PartitionKey, payload, string(md), now, now)
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?,?,?,?,?,?)")
	}
	return b.String(), args, nil
}
