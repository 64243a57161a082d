package inbox

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"gorm.io/gorm"
)

// Migrations holds the DDL of the inbox table as plain SQL files in
// golang-migrate layout: postgres/NNNNNN_name.up.sql and .down.sql, and the
// same for sqlite/. They use the default table name "txoutbox_inbox".
//
//go:embed migrations
var Migrations embed.FS

// migrateLockKey is the PostgreSQL advisory lock that serialises concurrent
// Migrate calls (several instances starting at once).
const migrateLockKey = 0x7478696e626f78 // "txinbox"

// Migrate creates or upgrades the default inbox table (DefaultTable) on db.
// It is a shortcut for New(db, Config{}) followed by Inbox.Migrate.
func Migrate(ctx context.Context, db *gorm.DB) error {
	in, err := New(db, Config{})
	if err != nil {
		return err
	}
	return in.Migrate(ctx)
}

// Migrate creates or upgrades the inbox table. It is idempotent and safe to
// run from several processes at once: every statement is written to be
// re-run, and on PostgreSQL the run holds an advisory lock.
func (in *Inbox) Migrate(ctx context.Context) error {
	stmts, err := in.migrationStatements()
	if err != nil {
		return err
	}
	return in.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if in.dialect == postgres {
			if err := tx.Exec("SELECT pg_advisory_xact_lock(?)", int64(migrateLockKey)).Error; err != nil {
				return fmt.Errorf("inbox: migrate %s: lock: %w", in.table, err)
			}
		}
		for _, st := range stmts {
			if err := tx.Exec(st).Error; err != nil {
				return fmt.Errorf("inbox: migrate %s: %w\n%s", in.table, err, st)
			}
		}
		return nil
	})
}

// migrationStatements returns the up statements for the inbox's dialect in
// order, with the default table name replaced by the configured one.
func (in *Inbox) migrationStatements() ([]string, error) {
	dir := path.Join("migrations", in.dialect.String())
	entries, err := fs.ReadDir(Migrations, dir)
	if err != nil {
		return nil, fmt.Errorf("inbox: read migrations: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".up.sql") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	replacer := strings.NewReplacer(
		`"`+DefaultTable+`_`, `"`+in.table.name+`_`, // index names: unqualified
		`"`+DefaultTable+`"`, in.quoted, // table references
	)
	var stmts []string
	if in.table.schema != "" {
		stmts = append(stmts, "CREATE SCHEMA IF NOT EXISTS "+quoteIdent(in.table.schema))
	}
	for _, n := range names {
		b, err := fs.ReadFile(Migrations, path.Join(dir, n))
		if err != nil {
			return nil, fmt.Errorf("inbox: read migration %s: %w", n, err)
		}
		stmts = append(stmts, splitSQL(replacer.Replace(string(b)))...)
	}
	return stmts, nil
}

// splitSQL splits a migration file into statements. Migration files keep
// comments on their own lines and end each statement with ";" at the end of
// a line.
func splitSQL(src string) []string {
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
