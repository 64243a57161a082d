package inbox

import (
	"math"
	"math/rand/v2"
	"text/template"
	"time"

	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"gorm.io/gorm"
)

// mysqlDriver is the inbox on MySQL 8.0+ and MariaDB 10.6+ (GORM's
// gorm.io/driver/mysql serves both). Its statements are text both
// databases accept; sql/mysql.sql notes where they differ.
type mysqlDriver struct{}

// mysqlSQL are MySQL's statements.
var mysqlSQL = parseSQL("sql/mysql.sql")

// mysqlMigrateLock is the user lock (GET_LOCK) that serialises
// concurrent Migrate calls on one server.
const mysqlMigrateLock = "txoutbox_inbox_migrate"

// mysqlTimeFormat is how received_at and failed_at, DATETIME(6), are
// written: UTC wall time to the microsecond. A DATETIME has no time zone,
// so the value is the same whatever the session's time_zone and the
// driver's loc setting are.
const mysqlTimeFormat = "2006-01-02 15:04:05.000000"

func (mysqlDriver) dialect() sqlschema.Dialect { return sqlschema.MySQL }

func (mysqlDriver) templates() *template.Template { return mysqlSQL }

// checkTable accepts every table: a schema is a database on MySQL.
func (mysqlDriver) checkTable(sqlschema.Table) error { return nil }

// timeArg returns t as the text received_at and failed_at store.
func (mysqlDriver) timeArg(t time.Time) any { return t.UTC().Format(mysqlTimeFormat) }

func (mysqlDriver) migrationLock() func(*gorm.DB) (func() error, error) {
	return sqlschema.MySQLLock(mysqlMigrateLock)
}

func (mysqlDriver) ownStatements() []string { return []string{"recorded", "cleanup_pick"} }

// cleanup locks the batch (cleanup_pick: FOR UPDATE SKIP LOCKED, so that
// cleaners running at once take disjoint batches), then deletes it by key,
// one DELETE per consumer, in one transaction. A single DELETE of a
// SKIP LOCKED or LIMIT subquery would be unsafe for statement-based
// binary logging (MariaDB and MySQL flag it, code 1592 naming reason 4175
// or LIMIT): a replica replaying the statement could delete other rows.
// The DELETE by key is deterministic under every binlog_format.
func (mysqlDriver) cleanup(db *gorm.DB, s *statements, cutoff any, batch int) (int64, error) {
	var n int64
	err := db.Transaction(func(tx *gorm.DB) error {
		var rows []struct {
			Consumer    string
			MessageUUID string
		}
		if err := tx.Raw(s.own["cleanup_pick"], cutoff, batch).Scan(&rows).Error; err != nil {
			return err
		}
		byConsumer := map[string][]string{}
		for _, r := range rows {
			byConsumer[r.Consumer] = append(byConsumer[r.Consumer], r.MessageUUID)
		}
		for consumer, uuids := range byConsumer {
			res := tx.Exec(s.unrecord, consumer, uuids)
			if res.Error != nil {
				return res.Error
			}
			n += res.RowsAffected
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// record inserts the rows without RETURNING, which MySQL lacks (MariaDB
// has INSERT ... RETURNING since 10.5): every row the insert writes
// carries a token drawn for this call, and recorded then reads back the
// UUIDs whose row carries it. A row another transaction recorded keeps
// its own token: the insert skips it (ON DUPLICATE KEY UPDATE with no
// change), after waiting for that transaction when it has not committed
// yet, and inserts the row when it rolled back. So a transaction finds
// its token only on rows it inserted, and of concurrent transactions
// recording a UUID one at a time does. Affected-row counts could not say
// which rows of a batch were new, and they change meaning with the
// driver's clientFoundRows setting.
//
// Tokens are random and never 0, the column's default; a row recorded
// earlier could carry the same token only by a 1 in 2^63 chance.
//
// When a transaction that inserted rows others wait for rolls back, their
// locks pass to the gap before the next row, and two of them inserting
// into it can deadlock (error 1213): InnoDB rolls one back whole. The
// Consumer then runs its batch again; Process returns the error.
func (mysqlDriver) record(tx *gorm.DB, s *statements, consumer string, uuids []string, at any) ([]string, error) {
	token := rand.Int64N(math.MaxInt64) + 1
	args := make([]any, 0, 4*len(uuids))
	for _, u := range uuids {
		args = append(args, consumer, u, at, token)
	}
	if err := tx.Exec(s.recordMany(len(uuids)), args...).Error; err != nil {
		return nil, err
	}
	var inserted []string
	if err := tx.Raw(s.own["recorded"], consumer, uuids, token).Scan(&inserted).Error; err != nil {
		return nil, err
	}
	return inserted, nil
}

// changedUUIDs selects and locks the rows (FOR UPDATE), then changes
// them, in one transaction: MySQL has no UPDATE or DELETE ... RETURNING
// (MariaDB has DELETE ... RETURNING, and neither UPDATE ... RETURNING).
// The lock keeps the rows as selected until the change commits.
func (mysqlDriver) changedUUIDs(db *gorm.DB, query string, args []any, change func(*gorm.DB, []string) error) ([]string, error) {
	var uuids []string
	err := db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Raw(query, args...).Scan(&uuids).Error; err != nil {
			return err
		}
		if len(uuids) == 0 {
			return nil
		}
		return change(tx, uuids)
	})
	if err != nil {
		return nil, err
	}
	return uuids, nil
}
