package inbox

import (
	"embed"
	"fmt"
	"strings"
	"text/template"
	"time"

	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"github.com/txoutbox/txoutbox/internal/sqltmpl"
	"gorm.io/gorm"
)

// driver is what the inbox does differently on one database: each
// database has its own (driver_<database>.go) and its own statements file
// (sql/<database>.sql). New picks the driver of the *gorm.DB's dialector.
type driver interface {
	// dialect names the database; its migrations are in migrations/<dialect>.
	dialect() sqlschema.Dialect
	// templates returns the database's statements: sql/inbox.sql with the
	// database's own file.
	templates() *template.Template
	// checkTable reports a configured table the database cannot hold.
	checkTable(t sqlschema.Table) error
	// timeArg returns t as the database stores received_at and failed_at.
	timeArg(t time.Time) any
	// migrationLock keeps concurrent migrations apart
	// (sqlschema.Migration.Lock); nil for none.
	migrationLock() func(tx *gorm.DB) (func() error, error)
}

// drivers are the supported databases' drivers.
var drivers = map[sqlschema.Dialect]driver{
	sqlschema.Postgres: postgresDriver{},
	sqlschema.SQLite:   sqliteDriver{},
}

// sqlFiles holds the statements of every database, as templates.
//
//go:embed sql/*.sql
var sqlFiles embed.FS

// parseSQL parses the shared statements and then a database's file, whose
// definitions replace shared ones of the same name.
func parseSQL(file string) *template.Template {
	return template.Must(template.ParseFS(sqlFiles, "sql/inbox.sql", file))
}

// statements are an Inbox's statements, rendered once per Inbox with its
// tables' names from the templates byName lists. recordValues is
// record_many with {values} in place of its rows; see recordMany.
type statements struct {
	record, recordValues, unrecord, cleanup, countCleanup string

	listFailed, listFailedOf, failedCounts  string
	retry, retryUUIDs, retryAll, retryAllOf string
	discard, discardUUIDs                   string

	deleteFailed, failAgain, insertFailed, heldKeys        string
	redrive, redriveUnkeyed, redriveKeyHeads, redriveKeyed string
}

// byName maps each statement's template name to its field.
func (s *statements) byName() map[string]*string {
	return map[string]*string{
		"record": &s.record, "record_many": &s.recordValues, "unrecord": &s.unrecord,
		"cleanup": &s.cleanup, "count_cleanup": &s.countCleanup,
		"list_failed": &s.listFailed, "list_failed_of": &s.listFailedOf, "failed_counts": &s.failedCounts,
		"retry": &s.retry, "retry_uuids": &s.retryUUIDs, "retry_all": &s.retryAll, "retry_all_of": &s.retryAllOf,
		"discard": &s.discard, "discard_uuids": &s.discardUUIDs,
		"delete_failed": &s.deleteFailed, "fail_again": &s.failAgain, "insert_failed": &s.insertFailed,
		"held_keys": &s.heldKeys, "redrive": &s.redrive, "redrive_unkeyed": &s.redriveUnkeyed,
		"redrive_key_heads": &s.redriveKeyHeads, "redrive_keyed": &s.redriveKeyed,
	}
}

// newStatements renders d's statements for the inbox table t and the
// failed table f.
func newStatements(d driver, t, f sqlschema.Table) (statements, error) {
	var s statements
	data := struct{ T, F string }{T: t.Quoted(), F: f.Quoted()}
	if err := sqltmpl.Render(d.templates(), data, s.byName()); err != nil {
		return statements{}, fmt.Errorf("inbox: statements: %w", err)
	}
	return s, nil
}

// recordMany returns the statement that records n messages, n > 0.
func (s *statements) recordMany(n int) string {
	return strings.Replace(s.recordValues, "{values}", strings.Repeat("(?, ?, ?), ", n-1)+"(?, ?, ?)", 1)
}
