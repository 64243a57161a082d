package inbox

import (
	"fmt"
	"text/template"
	"time"

	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"gorm.io/gorm"
)

// sqliteDriver is the inbox on SQLite.
type sqliteDriver struct{}

// sqliteSQL are SQLite's statements.
var sqliteSQL = parseSQL("sql/sqlite.sql")

// sqliteTimeFormat is fixed-width, so received_at sorts as it compares.
const sqliteTimeFormat = "2006-01-02T15:04:05.000000000Z"

func (sqliteDriver) dialect() sqlschema.Dialect { return sqlschema.SQLite }

func (sqliteDriver) templates() *template.Template { return sqliteSQL }

func (sqliteDriver) checkTable(t sqlschema.Table) error {
	if t.Schema != "" {
		return fmt.Errorf("%w: table %q: SQLite tables cannot be schema-qualified", ErrInvalidConfig, t)
	}
	return nil
}

// timeArg returns t as the text SQLite stores: UTC in sqliteTimeFormat.
func (sqliteDriver) timeArg(t time.Time) any { return t.UTC().Format(sqliteTimeFormat) }

// migrationLock is nil: SQLite runs one write transaction at a time.
func (sqliteDriver) migrationLock() func(*gorm.DB) (func() error, error) { return nil }

func (sqliteDriver) ownStatements() []string { return []string{"cleanup"} }

func (sqliteDriver) cleanup(db *gorm.DB, s *statements, cutoff any, batch int) (int64, error) {
	return cleanupOne(db, s, cutoff, batch)
}

func (sqliteDriver) record(tx *gorm.DB, s *statements, consumer string, uuids []string, at any) ([]string, error) {
	return recordReturning(tx, s, consumer, uuids, at)
}

func (sqliteDriver) changedUUIDs(db *gorm.DB, query string, args []any, change func(*gorm.DB, []string) error) ([]string, error) {
	return changedReturning(db, query, args, change)
}
