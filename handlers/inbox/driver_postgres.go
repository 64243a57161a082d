package inbox

import (
	"text/template"
	"time"

	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"gorm.io/gorm"
)

// postgresDriver is the inbox on PostgreSQL.
type postgresDriver struct{}

// postgresSQL are PostgreSQL's statements.
var postgresSQL = parseSQL("sql/postgres.sql")

// migrateLockKey is the PostgreSQL advisory lock that serialises concurrent
// Migrate calls (several instances starting at once).
const migrateLockKey = 0x7478696e626f78 // "txinbox"

func (postgresDriver) dialect() sqlschema.Dialect { return sqlschema.Postgres }

func (postgresDriver) templates() *template.Template { return postgresSQL }

func (postgresDriver) checkTable(sqlschema.Table) error { return nil }

// timeArg passes t as it is: received_at and failed_at are timestamptz.
func (postgresDriver) timeArg(t time.Time) any { return t }

func (postgresDriver) migrationLock() func(*gorm.DB) (func() error, error) {
	return sqlschema.PostgresLock(migrateLockKey)
}

func (postgresDriver) ownStatements() []string { return []string{"cleanup"} }

func (postgresDriver) cleanup(db *gorm.DB, s *statements, cutoff any, batch int) (int64, error) {
	return cleanupOne(db, s, cutoff, batch)
}

func (postgresDriver) record(tx *gorm.DB, s *statements, consumer string, uuids []string, at any) ([]string, error) {
	return recordReturning(tx, s, consumer, uuids, at)
}

func (postgresDriver) changedUUIDs(db *gorm.DB, query string, args []any, change func(*gorm.DB, []string) error) ([]string, error) {
	return changedReturning(db, query, args, change)
}
