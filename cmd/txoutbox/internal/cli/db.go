package cli

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/glebarez/sqlite"
	"github.com/go-sql-driver/mysql"
	"github.com/txoutbox/txoutbox/internal/dburl"
	gormmysql "gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// dbTarget is a parsed --database-url.
type dbTarget struct {
	// kind is the database.
	kind dburl.Kind
	// dsn is what the driver opens.
	dsn string
	// path is the SQLite file.
	path string
	// display names the database in messages, without a password.
	display string
}

// parseDatabaseURL accepts what dburl.Parse accepts: postgres:// and
// postgresql:// URLs, mysql:// and mariadb:// URLs, and SQLite as a file
// path, file:path[?params] or sqlite://path (sqlite:///abs/path). A server
// URL without a connect timeout of its own gets timeout.
func parseDatabaseURL(raw string, timeout time.Duration) (dbTarget, error) {
	if strings.TrimSpace(raw) == "" {
		return dbTarget{}, usagef("no database: set --database-url or %s (postgres://user@host:5432/db, mysql://user@host:3306/db, or a SQLite file path)", EnvDatabaseURL)
	}
	t, err := dburl.Parse(raw)
	if err != nil {
		return dbTarget{}, usagef("%v", err)
	}
	switch t.Kind {
	case dburl.SQLite:
		return sqliteTarget(t.Path, t.Params), nil
	case dburl.MySQL:
		return mysqlTarget(t, timeout)
	}
	u, err := url.Parse(t.URL)
	if err != nil { // dburl.Parse parsed it
		return dbTarget{}, usagef("%v", err)
	}
	q := u.Query()
	if q.Get("connect_timeout") == "" {
		q.Set("connect_timeout", fmt.Sprint(max(1, int(timeout.Round(time.Second).Seconds()))))
		u.RawQuery = q.Encode()
	}
	display := *u
	display.RawQuery = ""
	return dbTarget{kind: dburl.Postgres, dsn: u.String(), display: display.Redacted()}, nil
}

// mysqlTarget returns a MySQL/MariaDB database whose DSN has a dial
// timeout (go-sql-driver's timeout) of timeout unless the URL sets one.
func mysqlTarget(t dburl.Target, timeout time.Duration) (dbTarget, error) {
	cfg, err := mysql.ParseDSN(t.DSN)
	if err != nil { // dburl.Parse formatted it
		return dbTarget{}, usagef("%v", err)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = max(time.Second, timeout.Round(time.Second))
	}
	display := "mysql " + dburl.Redact(t.URL)
	if u, err := url.Parse(t.URL); err == nil {
		u.RawQuery = ""
		display = u.Redacted()
	}
	return dbTarget{kind: dburl.MySQL, dsn: cfg.FormatDSN(), display: display}, nil
}

// sqliteTarget returns a SQLite file with a busy timeout added, so the CLI
// waits for the application's writes instead of failing with "database is
// locked".
func sqliteTarget(path, params string) dbTarget {
	q := params
	if !strings.Contains(q, "busy_timeout") {
		if q != "" {
			q += "&"
		}
		q += "_pragma=busy_timeout(10000)"
	}
	return dbTarget{kind: dburl.SQLite, dsn: "file:" + path + "?" + q, path: path, display: "sqlite file " + path}
}

// open opens the database and checks that it answers within timeout. A
// SQLite file must exist unless create is set (migrate).
func (t dbTarget) open(ctx context.Context, timeout time.Duration, create bool) (*gorm.DB, error) {
	if t.kind == dburl.SQLite && !create && !strings.HasPrefix(t.path, ":memory:") {
		if _, err := os.Stat(t.path); err != nil {
			return nil, fmt.Errorf("cannot open %s: %w (run txoutbox migrate to create it)", t.display, err)
		}
	}
	cfg := &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true}
	var (
		dialector gorm.Dialector
		pool      *sql.DB // MySQL's, opened here
	)
	switch t.kind {
	case dburl.Postgres:
		dialector = postgres.Open(t.dsn)
	case dburl.MySQL:
		var err error
		if pool, err = dburl.OpenMySQL(ctx, t.dsn, timeout); err != nil {
			return nil, connectError(t.display, err)
		}
		dialector = gormmysql.New(gormmysql.Config{DSN: t.dsn, Conn: pool})
	default:
		dialector = sqlite.Open(t.dsn)
	}
	db, err := gorm.Open(dialector, cfg)
	if err != nil {
		if pool != nil {
			_ = pool.Close()
		}
		return nil, connectError(t.display, err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, err
	}
	sqlDB.SetMaxOpenConns(2)
	pingCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := sqlDB.PingContext(pingCtx); err != nil {
		_ = sqlDB.Close()
		return nil, connectError(t.display, err)
	}
	return db, nil
}

func closeDB(db *gorm.DB) {
	if sqlDB, err := db.DB(); err == nil {
		_ = sqlDB.Close()
	}
}
