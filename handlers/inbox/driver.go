package inbox

import (
	"database/sql"
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
	// ownStatements names the statements only the database's file
	// defines; newStatements renders them into statements.own.
	ownStatements() []string
	// record inserts the inbox rows (consumer, uuid, at) of uuids, sorted
	// and unique, in tx and returns the UUIDs it inserted: the others were
	// recorded before, or by a transaction that committed while the
	// insert waited for it. A UUID is returned to one transaction at a
	// time: another one recording it waits for that one and gets it back
	// only if it rolled back.
	record(tx *gorm.DB, s *statements, consumer string, uuids []string, at any) ([]string, error)
	// cleanup deletes one batch of at most batch rows received before
	// cutoff (timeArg) and returns how many it deleted. Cleaners running
	// at once take disjoint batches.
	cleanup(db *gorm.DB, s *statements, cutoff any, batch int) (int64, error)
	// changedUUIDs runs query (retry_uuids or discard_uuids) with args on
	// db and returns the UUIDs of the failed-table rows it changed. Where
	// the database cannot return them from the change, query selects and
	// locks the rows the change would change, and change then changes
	// them, in the same transaction.
	changedUUIDs(db *gorm.DB, query string, args []any, change func(tx *gorm.DB, uuids []string) error) ([]string, error)
}

// drivers are the supported databases' drivers.
var drivers = map[sqlschema.Dialect]driver{
	sqlschema.Postgres: postgresDriver{},
	sqlschema.SQLite:   sqliteDriver{},
	sqlschema.MySQL:    mysqlDriver{},
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
// record_many with {values} in place of its rows, recordRow the
// placeholders of one row; see recordMany.
type statements struct {
	recordValues, recordRow, unrecord, countCleanup string

	listFailed, listFailedOf, failedCounts  string
	retry, retryUUIDs, retryAll, retryAllOf string
	discard, discardUUIDs                   string

	deleteFailed, failAgain, insertFailed, heldKeys        string
	redrive, redriveUnkeyed, redriveKeyHeads, redriveKeyed string

	// own are the statements of driver.ownStatements, by name.
	own map[string]string
}

// byName maps each shared statement's template name to its field.
func (s *statements) byName() map[string]*string {
	return map[string]*string{
		"record_many": &s.recordValues, "record_row": &s.recordRow, "unrecord": &s.unrecord,
		"count_cleanup": &s.countCleanup,
		"list_failed":   &s.listFailed, "list_failed_of": &s.listFailedOf, "failed_counts": &s.failedCounts,
		"retry": &s.retry, "retry_uuids": &s.retryUUIDs, "retry_all": &s.retryAll, "retry_all_of": &s.retryAllOf,
		"discard": &s.discard, "discard_uuids": &s.discardUUIDs,
		"delete_failed": &s.deleteFailed, "fail_again": &s.failAgain, "insert_failed": &s.insertFailed,
		"held_keys": &s.heldKeys, "redrive": &s.redrive, "redrive_unkeyed": &s.redriveUnkeyed,
		"redrive_key_heads": &s.redriveKeyHeads, "redrive_keyed": &s.redriveKeyed,
	}
}

// newStatements renders d's statements for the inbox table t and the
// failed table f, quoted for d's database.
func newStatements(d driver, t, f sqlschema.Table) (statements, error) {
	s := statements{own: map[string]string{}}
	q := d.dialect()
	data := struct{ T, F string }{T: q.Quote(t), F: q.Quote(f)}
	dst := s.byName()
	own := make([]string, len(d.ownStatements()))
	for i, name := range d.ownStatements() {
		dst[name] = &own[i]
	}
	if err := sqltmpl.Render(d.templates(), data, dst); err != nil {
		return statements{}, fmt.Errorf("inbox: statements: %w", err)
	}
	for i, name := range d.ownStatements() {
		s.own[name] = own[i]
	}
	return s, nil
}

// recordMany returns the statement that records n messages, n > 0.
func (s *statements) recordMany(n int) string {
	return strings.Replace(s.recordValues, "{values}", strings.Repeat(s.recordRow+", ", n-1)+s.recordRow, 1)
}

// recordReturning is driver.record on a database whose INSERT skips
// recorded rows (ON CONFLICT DO NOTHING) and returns the inserted ones
// (RETURNING): one statement.
func recordReturning(tx *gorm.DB, s *statements, consumer string, uuids []string, at any) ([]string, error) {
	args := make([]any, 0, 3*len(uuids))
	for _, u := range uuids {
		args = append(args, consumer, u, at)
	}
	var inserted []string
	if err := tx.Raw(s.recordMany(len(uuids)), args...).Scan(&inserted).Error; err != nil {
		return nil, err
	}
	return inserted, nil
}

// cleanupOne is driver.cleanup on a database that deletes a batch in one
// statement: its own "cleanup", which takes the named arguments @cutoff
// and @batch.
func cleanupOne(db *gorm.DB, s *statements, cutoff any, batch int) (int64, error) {
	res := db.Exec(s.own["cleanup"], sql.Named("cutoff", cutoff), sql.Named("batch", batch))
	return res.RowsAffected, res.Error
}

// changedReturning is driver.changedUUIDs on a database whose UPDATE and
// DELETE return the changed rows (RETURNING): query is the change.
func changedReturning(db *gorm.DB, query string, args []any, _ func(*gorm.DB, []string) error) ([]string, error) {
	uuids := []string{}
	if err := db.Raw(query, args...).Scan(&uuids).Error; err != nil {
		return nil, err
	}
	return uuids, nil
}
