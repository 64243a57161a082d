package gormstore_test

import (
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Compile-time check: the native store is an outbox.Store.
var _ outbox.Store = (*gormstore.Store)(nil)

func record(topic, key, payload string) outbox.Record {
	return outbox.Record{Topic: topic, PartitionKey: key, Message: message.NewMessage(outbox.NewUUID(), []byte(payload))}
}

// migrated returns a store with cfg on a fresh database of dialect d, its
// table created.
func migrated(t *testing.T, d testdb.Dialect, cfg gormstore.Config) (*gormstore.Store, *gorm.DB) {
	t.Helper()
	db := testdb.Open(t, d)
	s, err := gormstore.New(db, cfg)
	require.NoError(t, err)
	require.NoError(t, s.Migrate(context.Background()))
	return s, db
}

func TestSaveNeedsTransaction(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		s, err := gormstore.New(db, gormstore.Config{})
		require.NoError(t, err)
		require.NoError(t, s.Migrate(ctx))
		recs := []outbox.Record{record("t", "", "x")}

		require.ErrorIs(t, s.Save(ctx, db, recs), outbox.ErrNoTransaction, "plain *gorm.DB")
		require.ErrorIs(t, s.Save(ctx, db.Session(&gorm.Session{}), recs), outbox.ErrNoTransaction, "session")
		require.ErrorIs(t, s.Save(ctx, nil, recs), outbox.ErrNoTransaction, "nil")
		prepared := db.Session(&gorm.Session{PrepareStmt: true})
		require.ErrorIs(t, s.Save(ctx, prepared, recs), outbox.ErrNoTransaction, "PrepareStmt *gorm.DB")
		require.Zero(t, testdb.Count(t, db, gormstore.DefaultTable, ""))

		// No records: nothing to do, so no transaction is needed.
		require.NoError(t, s.Save(ctx, db, nil))
	})
}

// Saving before the table exists says how to create it.
func TestSaveWithoutTableSaysToMigrate(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		s, err := gormstore.New(db, gormstore.Config{})
		require.NoError(t, err)
		err = db.Transaction(func(tx *gorm.DB) error {
			return s.Save(context.Background(), tx, []outbox.Record{record("t", "", "x")})
		})
		require.ErrorContains(t, err, "gormstore.Migrate")
		require.ErrorContains(t, err, "txoutbox migrate")
	})
}

// TestSaveTransactionKinds saves through every kind of transaction GORM
// hands out: Transaction, Begin, and a PrepareStmt session's transaction
// (whose ConnPool is a *gorm.PreparedStmtTX, not a *sql.Tx).
func TestSaveTransactionKinds(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		s, err := gormstore.New(db, gormstore.Config{})
		require.NoError(t, err)
		require.NoError(t, s.Migrate(ctx))

		require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
			return s.Save(ctx, tx, []outbox.Record{record("transaction", "", "1")})
		}))

		tx := db.Begin()
		require.NoError(t, tx.Error)
		require.NoError(t, s.Save(ctx, tx, []outbox.Record{record("begin", "", "2")}))
		require.NoError(t, tx.Commit().Error)

		prepared := db.Session(&gorm.Session{PrepareStmt: true})
		for range 2 { // the second run uses the cached prepared statement
			require.NoError(t, prepared.Transaction(func(tx *gorm.DB) error {
				return s.Save(ctx, tx, []outbox.Record{record("prepared", "", "3")})
			}))
		}

		var topics []string
		require.NoError(t, db.Raw(`SELECT topic FROM txoutbox_outbox ORDER BY id`).Scan(&topics).Error)
		require.Equal(t, []string{"transaction", "begin", "prepared", "prepared"}, topics)
	})
}

// countingPool counts the statements Save sends through a transaction.
type countingPool struct {
	gorm.ConnPool
	execs atomic.Int64
}

func (p *countingPool) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	p.execs.Add(1)
	return p.ConnPool.ExecContext(ctx, q, args...)
}
func (p *countingPool) Commit() error   { return p.ConnPool.(gorm.TxCommitter).Commit() }
func (p *countingPool) Rollback() error { return p.ConnPool.(gorm.TxCommitter).Rollback() }

// TestSaveOneStatementPerChunk checks that Save writes a command's events
// with one multi-row INSERT per 1,000 records, not one round trip each.
func TestSaveOneStatementPerChunk(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		s, err := gormstore.New(db, gormstore.Config{})
		require.NoError(t, err)
		require.NoError(t, s.Migrate(ctx))

		for _, tc := range []struct{ records, statements int }{{1, 1}, {10, 1}, {1000, 1}, {1001, 2}, {2500, 3}} {
			recs := make([]outbox.Record, tc.records)
			for i := range recs {
				recs[i] = record("t", "", "x")
			}
			var pool *countingPool
			require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
				counted := tx.Session(&gorm.Session{})
				pool = &countingPool{ConnPool: counted.Statement.ConnPool}
				counted.Statement.ConnPool = pool
				return s.Save(ctx, counted, recs)
			}))
			require.Equal(t, int64(tc.statements), pool.execs.Load(), "%d records", tc.records)
		}
		require.Equal(t, int64(1+10+1000+1001+2500), testdb.Count(t, db, gormstore.DefaultTable, ""))
	})
}

// TestSaveNilMetadata checks that a message without metadata is stored as an
// empty JSON object, not JSON null (a relay decoding null gets a nil
// message.Metadata, on which Set panics).
func TestSaveNilMetadata(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		s, err := gormstore.New(db, gormstore.Config{})
		require.NoError(t, err)
		require.NoError(t, s.Migrate(ctx))
		rec := record("t", "", "x")
		rec.Message.Metadata = nil
		require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
			return s.Save(ctx, tx, []outbox.Record{rec})
		}))
		var md string
		require.NoError(t, db.Raw(`SELECT metadata FROM txoutbox_outbox`).Scan(&md).Error)
		require.Equal(t, "{}", md)
	})
}

func TestSaveRecordWithoutMessage(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		s, err := gormstore.New(db, gormstore.Config{})
		require.NoError(t, err)
		require.NoError(t, s.Migrate(ctx))
		err = db.Transaction(func(tx *gorm.DB) error {
			return s.Save(ctx, tx, []outbox.Record{record("t", "", "x"), {Topic: "no message"}})
		})
		require.ErrorContains(t, err, "record 1 has no message")
		require.Zero(t, testdb.Count(t, db, gormstore.DefaultTable, ""))
	})
}

// TestSaveCanceledContext checks that Save runs its INSERT with the context
// it is given.
func TestSaveCanceledContext(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		s, err := gormstore.New(db, gormstore.Config{})
		require.NoError(t, err)
		require.NoError(t, s.Migrate(context.Background()))
		canceled, cancel := context.WithCancel(context.Background())
		cancel()
		err = db.Transaction(func(tx *gorm.DB) error {
			return s.Save(canceled, tx, []outbox.Record{record("t", "", "x")})
		})
		require.ErrorIs(t, err, context.Canceled)
		require.Zero(t, testdb.Count(t, db, gormstore.DefaultTable, ""))
	})
}

func TestNewWithoutDatabase(t *testing.T) {
	t.Parallel()
	noDialector, err := gorm.Open(nil, &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	for name, db := range map[string]*gorm.DB{
		"nil":          nil,
		"zero value":   {},
		"no dialector": noDialector,
	} {
		var s *gormstore.Store
		require.NotPanics(t, func() { s, err = gormstore.New(db, gormstore.Config{}) }, name)
		require.ErrorIs(t, err, gormstore.ErrInvalidConfig, name)
		require.Nil(t, s, name)
	}
}

// otherDialector stands for a database gormstore does not support (Oracle,
// SQL Server, ...): none of their drivers is a dependency of this module,
// and New looks only at the dialector's name.
type otherDialector struct{ gorm.Dialector }

func (otherDialector) Name() string              { return "oracle" }
func (otherDialector) Initialize(*gorm.DB) error { return nil }

func TestNewUnsupportedDialect(t *testing.T) {
	t.Parallel()
	db, err := gorm.Open(otherDialector{}, &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	s, err := gormstore.New(db, gormstore.Config{})
	require.ErrorIs(t, err, gormstore.ErrUnsupportedDialect)
	require.ErrorContains(t, err, `"oracle"`)
	require.Nil(t, s)
}

// statementCounter is a GORM logger that counts the statements run.
type statementCounter struct {
	logger.Interface
	n atomic.Int64
}

func (c *statementCounter) LogMode(logger.LogLevel) logger.Interface { return c }
func (c *statementCounter) Trace(context.Context, time.Time, func() (string, int64), error) {
	c.n.Add(1)
}

func TestInvalidTableNames(t *testing.T) {
	t.Parallel()
	bad := []string{
		"x; drop table y",
		`x"; drop table y; --`,
		"a.b.c",
		".events",
		"events.",
		"a..b",
		".",
		"1events",
		"app.1events",
		"9app.events",
		`"events"`,
		"'events'",
		"`events`",
		"events table",
		" events",
		"events\n",
		"ev-ents",
		"évents",
		strings.Repeat("a", 49),
		strings.Repeat("s", 64) + ".events",
	}
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		require.NoError(t, db.Exec(`CREATE TABLE y (id INTEGER)`).Error)
		counter := &statementCounter{Interface: logger.Discard}
		counted := db.Session(&gorm.Session{Logger: counter})
		for _, name := range bad {
			cfg := gormstore.Config{Table: name}
			require.ErrorIs(t, cfg.Validate(), gormstore.ErrInvalidConfig, "Validate %q", name)
			s, err := gormstore.New(counted, cfg)
			require.ErrorIs(t, err, gormstore.ErrInvalidConfig, "New %q", name)
			require.Nil(t, s, "New %q", name)
		}
		_, err := gormstore.New(db, gormstore.Config{Table: strings.Repeat("s", 64) + ".events"})
		require.ErrorContains(t, err, "schema longer than 63")
		require.Zero(t, counter.n.Load(), "rejecting a table name must not run SQL")
		require.Zero(t, testdb.Count(t, db, "y", ""), "table y must still exist")
	})
}

func TestValidTableNames(t *testing.T) {
	t.Parallel()
	for _, name := range []string{
		"", // the default
		"events", "_events", "Events", "e1", "order", "select",
		strings.Repeat("a", 48),
		"app.events",
		strings.Repeat("s", 63) + ".events",
	} {
		require.NoError(t, gormstore.Config{Table: name}.Validate(), "%q", name)
	}
}

func TestSchemaQualifiedOnSQLiteRejected(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.SQLite)
	for _, name := range []string{"main.events", "app.events"} {
		s, err := gormstore.New(db, gormstore.Config{Table: name})
		require.ErrorIs(t, err, gormstore.ErrInvalidConfig, "%q", name)
		require.ErrorContains(t, err, "SQLite")
		require.Nil(t, s)
	}
}

// TestCustomTable runs a custom table end to end next to the default one in
// the same database: both have their own indexes, and each store writes only
// to its own table.
func TestCustomTable(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		def, err := gormstore.New(db, gormstore.Config{})
		require.NoError(t, err)
		custom, err := gormstore.New(db, gormstore.Config{Table: "Events"})
		require.NoError(t, err)
		require.Equal(t, "Events", custom.Table())
		require.Equal(t, gormstore.DefaultTable, def.Table())
		require.NoError(t, custom.Migrate(ctx))
		require.NoError(t, def.Migrate(ctx))

		require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
			if err := custom.Save(ctx, tx, []outbox.Record{record("c1", "", "1"), record("c2", "", "2")}); err != nil {
				return err
			}
			return def.Save(ctx, tx, []outbox.Record{record("d1", "", "3")})
		}))
		require.Equal(t, int64(2), testdb.Count(t, db, quoteTable(db, "Events"), ""))
		require.Equal(t, int64(1), testdb.Count(t, db, gormstore.DefaultTable, ""))

		require.Equal(t, wantIndexes(t, db, "Events"), indexNames(t, db, "", "Events"))
		require.Equal(t, wantIndexes(t, db, gormstore.DefaultTable), indexNames(t, db, "", gormstore.DefaultTable))
	})
}

// TestLongestTableName checks that the longest accepted name keeps every
// derived index name whole (PostgreSQL truncates identifiers to 63 bytes).
func TestLongestTableName(t *testing.T) {
	t.Parallel()
	name := strings.Repeat("a", 48)
	_, db := migrated(t, testdb.Postgres, gormstore.Config{Table: name})
	require.Equal(t, wantIndexes(t, db, name), indexNames(t, db, "", name))
}

// TestSchemaQualifiedTable runs a schema-qualified table on PostgreSQL
// whose schema Migrate creates, migrating from 4 goroutines at once.
func TestSchemaQualifiedTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, ownSchema := testdb.OpenPostgres(t)
	schema := uniqueSchema(t, db)
	s, err := gormstore.New(db, gormstore.Config{Table: schema + ".events"})
	require.NoError(t, err)
	require.Equal(t, schema+".events", s.Table())

	errs := make(chan error, 4)
	for range 4 {
		go func() { errs <- s.Migrate(ctx) }()
	}
	for range 4 {
		require.NoError(t, <-errs)
	}

	require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
		return s.Save(ctx, tx, []outbox.Record{record("a", "k", "1"), record("b", "k", "2")})
	}))
	rows := nativeRows(quoteTable(db, schema+".events"))(t, db)
	require.Len(t, rows, 2)
	require.Equal(t, "a", rows[0].Topic)
	require.Equal(t, "b", rows[1].Topic)

	require.Equal(t, wantIndexes(t, db, "events"), indexNames(t, db, schema, "events"))
	var inOwn int64
	require.NoError(t, db.Raw(`SELECT count(*) FROM pg_tables WHERE schemaname = ?`, ownSchema).Scan(&inOwn).Error)
	require.Zero(t, inOwn, "nothing may be created in the search_path schema")
}

// wantIndexes returns the sorted names of the indexes the migration files
// create for the default table, renamed for table: "<table>_<suffix>". Both
// dialects' files must create the same ones, among them the UUID key and
// the partial index on pending rows.
func wantIndexes(t *testing.T, db *gorm.DB, table string) []string {
	t.Helper()
	// CREATE [UNIQUE] INDEX IF NOT EXISTS "..." (PostgreSQL, SQLite), or
	// [UNIQUE] KEY `+"`...`"+` in CREATE TABLE (MySQL); DROP INDEX IF
	// EXISTS "..." removes one, in the files' order.
	re := regexp.MustCompile(`(DROP INDEX IF EXISTS "|CREATE (?:UNIQUE )?INDEX IF NOT EXISTS "|KEY ` + "`" + `)` + gormstore.DefaultTable + `_(\w+)["` + "`" + `]`)
	per := map[testdb.Dialect][]string{}
	for _, d := range testdb.Dialects {
		var names []string
		files, err := fs.Glob(gormstore.Migrations, "migrations/"+string(d)+"/*.up.sql")
		require.NoError(t, err)
		for _, f := range files {
			b, err := fs.ReadFile(gormstore.Migrations, f)
			require.NoError(t, err)
			for _, m := range re.FindAllStringSubmatch(string(b), -1) {
				name := table + "_" + m[2]
				names = slices.DeleteFunc(names, func(n string) bool { return n == name })
				if !strings.HasPrefix(m[1], "DROP") {
					names = append(names, name)
				}
			}
		}
		slices.Sort(names)
		require.Contains(t, names, table+"_uuid_key", string(d))
		require.Contains(t, names, table+"_pending_idx", string(d))
		per[d] = names
	}
	require.Equal(t, per[testdb.Postgres], per[testdb.SQLite], "PostgreSQL and SQLite migrations create the same indexes")
	d, _ := sqlschema.DialectOf(db)
	return per[testdb.Dialect(d.String())]
}

// indexNames lists the non-primary-key indexes of table, sorted. schema ""
// means the connection's search_path schema (PostgreSQL) or main (SQLite).
func indexNames(t *testing.T, db *gorm.DB, schema, table string) []string {
	t.Helper()
	var names []string
	var err error
	if db.Dialector.Name() == "sqlite" {
		err = db.Raw(`SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL ORDER BY name`, table).Scan(&names).Error
	} else if db.Dialector.Name() == "mysql" {
		err = db.Raw(`SELECT DISTINCT index_name FROM information_schema.statistics
			WHERE table_schema = coalesce(nullif(?, ''), database()) AND table_name = ? AND index_name <> 'PRIMARY' ORDER BY index_name`, schema, table).Scan(&names).Error
	} else if schema == "" {
		err = db.Raw(`SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = ? AND indexname NOT LIKE '%\_pkey' ORDER BY indexname`, table).Scan(&names).Error
	} else {
		err = db.Raw(`SELECT indexname FROM pg_indexes WHERE schemaname = ? AND tablename = ? AND indexname NOT LIKE '%\_pkey' ORDER BY indexname`, schema, table).Scan(&names).Error
	}
	require.NoError(t, err)
	return names
}

var errRollback = errors.New("roll back")
