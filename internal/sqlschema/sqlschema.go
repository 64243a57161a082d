// Package sqlschema holds what the project's tables share: validated,
// always-quoted table names, and migrations shipped as plain SQL files in
// golang-migrate layout and run by Migrate functions with a configured table
// name.
package sqlschema

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strings"

	"gorm.io/gorm"
)

// MaxIdentLen is PostgreSQL's identifier length limit.
const MaxIdentLen = 63

var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ErrBadTableName is wrapped by every ParseTable error.
var ErrBadTableName = errors.New("bad table name")

// Table is a validated, optionally schema-qualified table name.
type Table struct {
	// Schema is empty for an unqualified name.
	Schema string
	// Name is the table's own name.
	Name string
}

// ParseTable validates s as "name" or "schema.name", each part a plain SQL
// identifier (letters, digits and _, not starting with a digit), the name
// at most maxNameLen bytes long (callers keep room for derived index names).
func ParseTable(s string, maxNameLen int) (Table, error) {
	parts := strings.Split(s, ".")
	if len(parts) > 2 {
		return Table{}, fmt.Errorf("%w: table %q: use name or schema.name", ErrBadTableName, s)
	}
	for _, p := range parts {
		if !identRe.MatchString(p) {
			return Table{}, fmt.Errorf("%w: table %q: %q is not a plain SQL identifier (letters, digits and _, not starting with a digit)", ErrBadTableName, s, p)
		}
	}
	t := Table{Name: parts[len(parts)-1]}
	if len(parts) == 2 {
		t.Schema = parts[0]
	}
	if len(t.Name) > maxNameLen {
		return Table{}, fmt.Errorf("%w: table %q: name longer than %d characters", ErrBadTableName, s, maxNameLen)
	}
	if len(t.Schema) > MaxIdentLen {
		return Table{}, fmt.Errorf("%w: table %q: schema longer than %d characters", ErrBadTableName, s, MaxIdentLen)
	}
	return t, nil
}

// Quoted returns the name quoted for standard SQL: "schema"."name".
func (t Table) Quoted() string { return Postgres.Quote(t) }

// String returns the name as configured: schema.name or name.
func (t Table) String() string {
	if t.Schema == "" {
		return t.Name
	}
	return t.Schema + "." + t.Name
}

// QuoteIdent quotes an identifier that is already valid, for standard SQL.
func QuoteIdent(s string) string { return Postgres.QuoteIdent(s) }

// Migration describes the migration files of one table for one dialect.
type Migration struct {
	// Dialect quotes the table names written into the files.
	Dialect Dialect
	// FS holds the files; Dir is their folder in it ("migrations/postgres").
	FS  fs.FS
	Dir string
	// DefaultTable is the table name the files use; references to it
	// ("<default>" and index names "<default>_...") are replaced with Table.
	DefaultTable string
	// Table is the configured table.
	Table Table
	// Lock, when set, runs first on the migration's connection and keeps
	// concurrent migrations apart, so several instances may migrate at
	// once; the unlock it returns, when not nil, runs last
	// (PostgresLock, MySQLLock).
	Lock func(tx *gorm.DB) (unlock func() error, err error)
	// Related are the suffixes of tables named after DefaultTable that
	// the files also create ("_failed" for "<default>_failed"): their
	// references are replaced with Table's name plus the suffix, in
	// Table's schema.
	Related []string
}

// Statements returns the up statements in file order, with the table name
// replaced, preceded by CREATE SCHEMA for a schema-qualified table.
func (m Migration) Statements() ([]string, error) {
	d := m.Dialect
	entries, err := fs.ReadDir(m.FS, m.Dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".up.sql") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var pairs []string
	for _, suffix := range m.Related {
		// Listed first: at one position the replacer tries its pairs in
		// order, so a related table is not taken for an index name.
		related := Table{Schema: m.Table.Schema, Name: m.Table.Name + suffix}
		pairs = append(pairs, d.QuoteIdent(m.DefaultTable+suffix), d.Quote(related))
	}
	q := d.quote()
	if m.Table.Schema != "" {
		// An index is created in its table's schema, but DROP INDEX finds
		// an unqualified name on the search_path.
		const drop = "DROP INDEX IF EXISTS "
		pairs = append(pairs, drop+q+m.DefaultTable+`_`, drop+d.QuoteIdent(m.Table.Schema)+"."+q+m.Table.Name+`_`)
	}
	pairs = append(pairs,
		q+m.DefaultTable+`_`, q+m.Table.Name+`_`, // index names: unqualified
		d.QuoteIdent(m.DefaultTable), d.Quote(m.Table), // table references
	)
	replacer := strings.NewReplacer(pairs...)
	var stmts []string
	if m.Table.Schema != "" {
		stmts = append(stmts, "CREATE SCHEMA IF NOT EXISTS "+d.QuoteIdent(m.Table.Schema))
	}
	for _, n := range names {
		b, err := fs.ReadFile(m.FS, path.Join(m.Dir, n))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", n, err)
		}
		stmts = append(stmts, Split(replacer.Replace(string(b)))...)
	}
	return stmts, nil
}

// Run runs the statements in one transaction on db, holding LockKey.
func (m Migration) Run(ctx context.Context, db *gorm.DB) error {
	stmts, err := m.Statements()
	if err != nil {
		return err
	}
	return db.WithContext(ctx).Transaction(func(tx *gorm.DB) (err error) {
		if m.Lock != nil {
			unlock, err := m.Lock(tx)
			if err != nil {
				return fmt.Errorf("lock: %w", err)
			}
			if unlock != nil {
				defer func() {
					if uerr := unlock(); uerr != nil && err == nil {
						err = fmt.Errorf("unlock: %w", uerr)
					}
				}()
			}
		}
		for _, st := range stmts {
			if err := tx.Exec(st).Error; err != nil {
				return fmt.Errorf("%w\n%s", err, st)
			}
		}
		return nil
	})
}

// PostgresLock returns a Migration.Lock that holds the PostgreSQL
// advisory lock key until the migration's transaction ends.
func PostgresLock(key int64) func(tx *gorm.DB) (func() error, error) {
	return func(tx *gorm.DB) (func() error, error) {
		return nil, tx.Exec("SELECT pg_advisory_xact_lock(?)", key).Error
	}
}

// mysqlLockWait bounds how long a MySQL migration waits for another's lock.
const mysqlLockWait = 60

// MySQLLock returns a Migration.Lock that holds the MySQL user lock name
// (GET_LOCK) on the migration's connection, waiting up to a minute for
// another migration to finish. MySQL ends a transaction at each DDL
// statement, so the lock is the session's and the unlock releases it.
func MySQLLock(name string) func(tx *gorm.DB) (func() error, error) {
	return func(tx *gorm.DB) (func() error, error) {
		var got sql.NullInt64
		if err := tx.Raw("SELECT GET_LOCK(?, ?)", name, mysqlLockWait).Scan(&got).Error; err != nil {
			return nil, err
		}
		if got.Int64 != 1 {
			return nil, fmt.Errorf("another migration held lock %q for %d s", name, mysqlLockWait)
		}
		return func() error { return tx.Exec("DO RELEASE_LOCK(?)", name).Error }, nil
	}
}

// Split splits a migration file into statements. Migration files keep
// comments on their own lines and end each statement with ";" at the end of
// a line.
func Split(src string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(trimmed, ";") {
			out = append(out, strings.TrimSpace(cur.String()))
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}

// Dialect is a database the project's tables support.
type Dialect int

// The supported dialects.
const (
	Postgres Dialect = iota + 1
	SQLite
	MySQL // MySQL and MariaDB
)

// String returns the dialect's name, also the folder of its migrations.
func (d Dialect) String() string {
	switch d {
	case Postgres:
		return "postgres"
	case SQLite:
		return "sqlite"
	case MySQL:
		return "mysql"
	}
	return "unknown"
}

// quote is the dialect's identifier quote: a backtick on MySQL, which
// reads a double quote as a string's unless ANSI_QUOTES is set, and the
// standard double quote elsewhere.
func (d Dialect) quote() string {
	if d == MySQL {
		return "`"
	}
	return `"`
}

// QuoteIdent quotes an identifier that is already valid.
func (d Dialect) QuoteIdent(s string) string { return d.quote() + s + d.quote() }

// Quote returns t quoted: "schema"."name" in standard SQL, with backticks on MySQL.
func (d Dialect) Quote(t Table) string {
	if t.Schema == "" {
		return d.QuoteIdent(t.Name)
	}
	return d.QuoteIdent(t.Schema) + "." + d.QuoteIdent(t.Name)
}

// DialectOf returns the dialect of an opened *gorm.DB, and false for a
// database the project does not support.
func DialectOf(db *gorm.DB) (Dialect, bool) {
	switch db.Dialector.Name() {
	case "postgres":
		return Postgres, true
	case "sqlite":
		return SQLite, true
	case "mysql":
		return MySQL, true
	}
	return 0, false
}
