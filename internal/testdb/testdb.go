// Package testdb opens isolated databases for the project's tests: a fresh
// PostgreSQL schema or MySQL/MariaDB database per test (dropped when the
// test ends) or a SQLite file in the test's temp dir. A test that needs a
// database server fails loudly when it is unreachable; it is never skipped.
package testdb

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/glebarez/sqlite"
	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// DefaultURL is the PostgreSQL test database used when TEST_DATABASE_URL is
// not set.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// DefaultMySQLURL is the MySQL/MariaDB server used when TEST_MYSQL_URL is
// not set; each test gets a database of its own on it.
const DefaultMySQLURL = "mysql://root@127.0.0.1:3306/test"

// Dialect names a database the tests run on.
type Dialect string

// The dialects the tests run on.
const (
	Postgres Dialect = "postgres"
	SQLite   Dialect = "sqlite"
	MySQL    Dialect = "mysql" // MySQL or MariaDB
)

// Dialects lists every dialect, for tests that run on all of them.
var Dialects = []Dialect{Postgres, SQLite, MySQL}

// URL returns the PostgreSQL test database URL.
func URL() string { return cmp.Or(os.Getenv("TEST_DATABASE_URL"), DefaultURL) }

// Open returns a database of dialect d that belongs to tb alone.
func Open(tb testing.TB, d Dialect) *gorm.DB {
	tb.Helper()
	switch d {
	case Postgres:
		db, _ := OpenPostgres(tb)
		return db
	case SQLite:
		return OpenSQLite(tb)
	case MySQL:
		db, _ := OpenMySQL(tb)
		return db
	}
	tb.Fatalf("testdb: unknown dialect %q", d)
	return nil
}

// Each runs f as a subtest once per dialect.
func Each(t *testing.T, f func(t *testing.T, db *gorm.DB)) {
	t.Helper()
	for _, d := range Dialects {
		t.Run(string(d), func(t *testing.T) {
			f(t, Open(t, d))
		})
	}
}

// OpenPostgres creates a fresh schema, returns a pool whose search_path is
// that schema, and the schema's name. The schema is dropped when tb ends.
func OpenPostgres(tb testing.TB) (*gorm.DB, string) {
	tb.Helper()
	schema := "t_" + randomHex(6)
	admin := OpenURL(tb, URL())
	if err := admin.Exec("CREATE SCHEMA " + schema).Error; err != nil {
		tb.Fatalf("testdb: PostgreSQL at %s is required (set TEST_DATABASE_URL, or run `make test` which starts it): %v", redact(URL()), err)
	}
	tb.Cleanup(func() {
		if err := admin.Exec("DROP SCHEMA " + schema + " CASCADE").Error; err != nil {
			tb.Errorf("testdb: drop schema %s: %v", schema, err)
		}
	})
	// Opened after the cleanup above, so closed before the schema is dropped.
	db := OpenURL(tb, SchemaURL(tb, schema))
	return db, schema
}

// SchemaURL returns the test database URL with search_path set to schema.
func SchemaURL(tb testing.TB, schema string) string {
	tb.Helper()
	u, err := url.Parse(URL())
	if err != nil {
		tb.Fatalf("testdb: bad TEST_DATABASE_URL: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// OpenURL opens a pool on the PostgreSQL database at dsn, closed when tb
// ends.
func OpenURL(tb testing.TB, dsn string) *gorm.DB {
	tb.Helper()
	db, err := gorm.Open(postgres.Open(dsn), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		tb.Fatalf("testdb: PostgreSQL at %s is required (set TEST_DATABASE_URL, or run `make test` which starts it): %v", redact(dsn), err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		tb.Fatalf("testdb: %v", err)
	}
	tb.Cleanup(func() { _ = sqlDB.Close() })
	sqlDB.SetMaxOpenConns(16)
	sqlDB.SetMaxIdleConns(16)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sqlDB.PingContext(ctx); err != nil {
		tb.Fatalf("testdb: PostgreSQL at %s is required (set TEST_DATABASE_URL, or run `make test` which starts it): %v", redact(dsn), err)
	}
	return db
}

// MySQLURL returns the MySQL test server URL.
func MySQLURL() string { return cmp.Or(os.Getenv("TEST_MYSQL_URL"), DefaultMySQLURL) }

// MySQLDSN returns the go-sql-driver DSN of database db on the server at
// MySQLURL (mysql://user[:password]@host:port/...), with the settings the
// stores need: times parsed as UTC, and arguments interpolated into the
// text (one round trip per statement instead of a prepare and an execute).
func MySQLDSN(tb testing.TB, db string) string {
	tb.Helper()
	u, err := url.Parse(MySQLURL())
	if err != nil || u.Scheme != "mysql" {
		tb.Fatalf("testdb: bad TEST_MYSQL_URL %q (use mysql://user@host:3306/db)", redact(MySQLURL()))
	}
	cfg := gomysql.NewConfig()
	cfg.User = u.User.Username()
	cfg.Passwd, _ = u.User.Password()
	cfg.Net = "tcp"
	cfg.Addr = u.Host
	cfg.DBName = db
	cfg.ParseTime = true
	cfg.Loc = time.UTC
	cfg.InterpolateParams = true
	return cfg.FormatDSN()
}

// OpenMySQL creates a fresh database on the MySQL/MariaDB server at
// MySQLURL, returns a pool on it and its name. The database is dropped when
// tb ends.
func OpenMySQL(tb testing.TB) (*gorm.DB, string) {
	tb.Helper()
	name := "t_" + randomHex(6)
	admin := openMySQL(tb, MySQLDSN(tb, ""))
	if err := admin.Exec("CREATE DATABASE " + name + " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin").Error; err != nil {
		tb.Fatalf("testdb: MySQL/MariaDB at %s is required (set TEST_MYSQL_URL, or run `make test` which starts it): %v", redact(MySQLURL()), err)
	}
	tb.Cleanup(func() {
		if err := admin.Exec("DROP DATABASE " + name).Error; err != nil {
			tb.Errorf("testdb: drop database %s: %v", name, err)
		}
	})
	// Opened after the cleanup above, so closed before the database is dropped.
	return openMySQL(tb, MySQLDSN(tb, name)), name
}

func openMySQL(tb testing.TB, dsn string) *gorm.DB {
	tb.Helper()
	db, err := gorm.Open(mysql.Open(dsn), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		tb.Fatalf("testdb: MySQL/MariaDB at %s is required (set TEST_MYSQL_URL, or run `make test` which starts it): %v", redact(MySQLURL()), err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		tb.Fatalf("testdb: %v", err)
	}
	tb.Cleanup(func() { _ = sqlDB.Close() })
	sqlDB.SetMaxOpenConns(16)
	sqlDB.SetMaxIdleConns(16)
	return db
}

// OpenSQLite returns a SQLite database in a file under tb's temp dir, in WAL
// mode with a busy timeout, as the embedded default uses it.
func OpenSQLite(tb testing.TB) *gorm.DB {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "test.db")
	db, err := gorm.Open(sqlite.Open(SQLiteDSN(path)), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		tb.Fatalf("testdb: open SQLite %s: %v", path, err)
	}
	tb.Cleanup(func() { closeDB(db) })
	return db
}

// SQLiteDSN returns the DSN the tests use for a SQLite file: the embedded
// default's settings, with a busy timeout of a minute. SQLite lets one
// writer in at a time and its busy handler is not fair, so under -race on
// a loaded 2-core machine one of eight concurrent writers was seen waiting
// more than the application's 10 s.
func SQLiteDSN(path string) string {
	return "file:" + path + "?_pragma=busy_timeout(60000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
}

func closeDB(db *gorm.DB) {
	if sqlDB, err := db.DB(); err == nil {
		_ = sqlDB.Close()
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// Count returns the number of rows of table that match where (with args).
func Count(tb testing.TB, db *gorm.DB, table, where string, args ...any) int64 {
	tb.Helper()
	var n int64
	q := fmt.Sprintf("SELECT count(*) FROM %s", table)
	if where != "" {
		q += " WHERE " + where
	}
	if err := db.Raw(q, args...).Scan(&n).Error; err != nil {
		tb.Fatalf("testdb: count %s: %v", table, err)
	}
	return n
}
