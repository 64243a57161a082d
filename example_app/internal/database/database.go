package database

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
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

// Dialect names a database.
type Dialect string

// The databases the example app runs on.
const (
	// SQLite is a file under the data directory (pure Go, no cgo): the
	// default.
	SQLite Dialect = "sqlite"
	// Postgres is PostgreSQL at a postgres:// URL.
	Postgres Dialect = "postgres"
	// MySQL is MySQL or MariaDB at a mysql:// or mariadb:// URL.
	MySQL Dialect = "mysql"
)

// DefaultFile is the SQLite file name under the data directory.
const DefaultFile = "orders.db"

// Errors of this package; compare with errors.Is.
var (
	// ErrInvalidURL wraps every problem ParseURL finds.
	ErrInvalidURL = dburl.ErrInvalid
	// ErrUnreachable is returned by Open when the database does not answer.
	ErrUnreachable = errors.New("database unreachable")
)

// Config says which database to open. Get one from ParseURL.
type Config struct {
	// Dialect is the database.
	Dialect Dialect
	// URL is the server URL as given (Postgres and MySQL).
	URL string
	// DSN is the go-sql-driver/mysql DSN that URL maps to (MySQL only):
	// parseTime=true and loc=UTC, which the stores need, and
	// interpolateParams=true unless URL sets it.
	DSN string
	// Path is the SQLite file (SQLite only).
	Path string
	// Params are SQLite URI parameters from a file:path?params URL, added
	// to (and winning over) the defaults of SQLiteDSN. SQLite only.
	Params string
}

// String describes the database without credentials, for log lines.
func (c Config) String() string {
	if c.Dialect == SQLite {
		return "sqlite file " + c.Path
	}
	if u, err := url.Parse(c.URL); err == nil {
		u.RawQuery = ""
		return string(c.Dialect) + " " + u.Redacted()
	}
	return string(c.Dialect)
}

// ParseURL turns a database URL (DATABASE_URL, --database-url) into a
// Config. It accepts what the txoutbox CLI accepts:
//
//   - "": the SQLite file DefaultFile under dataDir;
//   - postgres://... and postgresql://...: PostgreSQL;
//   - mysql://user[:password]@host[:port]/db[?params] and mariadb://...:
//     MySQL or MariaDB (params are go-sql-driver/mysql DSN parameters);
//   - a SQLite file as a plain path (./app.db, /tmp/x.db), as
//     file:path[?params] (SQLite URI parameters such as
//     _pragma=cache_size(-20000)), or as sqlite://path or sqlite3://path
//     (sqlite:///abs/path.db, sqlite://relative.db; no parameters).
//
// An in-memory database (:memory:) is refused: the service keeps a pool of
// connections, and each would see a database of its own. The error wraps
// ErrInvalidURL and does not name where raw came from; the caller adds
// the flag or the variable.
func ParseURL(raw, dataDir string) (Config, error) {
	if strings.TrimSpace(raw) == "" {
		if dataDir == "" {
			return Config{}, fmt.Errorf("%w: no database URL and no data directory", ErrInvalidURL)
		}
		return Config{Dialect: SQLite, Path: filepath.Join(dataDir, DefaultFile)}, nil
	}
	t, err := dburl.Parse(raw)
	if err != nil {
		return Config{}, err
	}
	switch t.Kind {
	case dburl.Postgres:
		return Config{Dialect: Postgres, URL: t.URL}, nil
	case dburl.MySQL:
		return Config{Dialect: MySQL, URL: t.URL, DSN: t.DSN}, nil
	}
	return Config{Dialect: SQLite, Path: t.Path, Params: t.Params}, nil
}

// Open opens the database and checks that it answers within timeout. A
// SQLite file's directory is created when missing. The pool is sized for
// the app: SQLite serializes writers anyway (WAL mode, a 10 s busy
// timeout, write transactions that take the write lock at BEGIN).
func Open(ctx context.Context, cfg Config, timeout time.Duration) (*gorm.DB, error) {
	gcfg := &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true}
	var (
		db  *gorm.DB
		err error
	)
	switch cfg.Dialect {
	case SQLite:
		if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o755); err != nil {
			return nil, fmt.Errorf("create the data directory: %w", err)
		}
		db, err = gorm.Open(sqlite.Open(sqliteDSN(cfg.Path, cfg.Params)), gcfg)
	case Postgres:
		db, err = gorm.Open(postgres.Open(withConnectTimeout(cfg.URL, timeout)), gcfg)
	case MySQL:
		dsn, derr := withDialTimeout(cfg.DSN, timeout)
		if derr != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInvalidURL, cfg, derr)
		}
		pool, perr := dburl.OpenMySQL(ctx, dsn, timeout)
		if perr != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrUnreachable, cfg, perr)
		}
		if db, err = gorm.Open(gormmysql.New(gormmysql.Config{DSN: dsn, Conn: pool}), gcfg); err != nil {
			_ = pool.Close()
		}
	default:
		return nil, fmt.Errorf("%w: unknown dialect %q", ErrInvalidURL, cfg.Dialect)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnreachable, cfg, err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, err
	}
	if cfg.Dialect == SQLite {
		sqlDB.SetMaxOpenConns(8)
	} else {
		sqlDB.SetMaxOpenConns(32)
	}
	sqlDB.SetMaxIdleConns(8)
	pingCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := sqlDB.PingContext(pingCtx); err != nil {
		_ = sqlDB.Close()
		return nil, fmt.Errorf("%w: %s: %w", ErrUnreachable, cfg, err)
	}
	return db, nil
}

// Close closes db's pool.
func Close(db *gorm.DB) error {
	sqlDB, err := db.DB()
	if err != nil {
		return err
	}
	return sqlDB.Close()
}

// SQLiteDSN returns the DSN of a SQLite file: WAL mode, a busy timeout,
// synchronous=NORMAL (durable at checkpoints, safe against corruption) and
// BEGIN IMMEDIATE for write transactions, so two writers never deadlock on
// a lock upgrade.
func SQLiteDSN(path string) string { return sqliteDSN(path, "") }

// sqliteDSN is SQLiteDSN with the URI parameters params: a pragma or
// _txlock set in params replaces the default one.
func sqliteDSN(path, params string) string {
	q := []string{}
	if params != "" {
		q = append(q, params)
	}
	for _, d := range []struct{ key, param string }{
		{"busy_timeout", "_pragma=busy_timeout(10000)"},
		{"journal_mode", "_pragma=journal_mode(WAL)"},
		{"synchronous", "_pragma=synchronous(NORMAL)"},
		{"_txlock", "_txlock=immediate"},
	} {
		if !strings.Contains(params, d.key) {
			q = append(q, d.param)
		}
	}
	return "file:" + path + "?" + strings.Join(q, "&")
}

// withConnectTimeout adds connect_timeout to a PostgreSQL URL that has none,
// so an unreachable server fails fast instead of hanging.
func withConnectTimeout(raw string, timeout time.Duration) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	q := u.Query()
	if q.Get("connect_timeout") == "" {
		q.Set("connect_timeout", fmt.Sprint(max(1, int(timeout.Seconds()))))
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// withDialTimeout sets go-sql-driver's dial timeout of a MySQL DSN that has
// none, so an unreachable server fails fast instead of hanging.
func withDialTimeout(dsn string, timeout time.Duration) (string, error) {
	c, err := mysql.ParseDSN(dsn)
	if err != nil {
		return "", err
	}
	if c.Timeout == 0 {
		c.Timeout = max(time.Second, timeout)
	}
	return c.FormatDSN(), nil
}

// OnDuplicateIDDoNothing returns the clause that makes an INSERT into a
// table with primary key id insert nothing, and affect no row, when the id
// is taken: ON CONFLICT (id) DO NOTHING, or on MySQL an update that changes
// nothing. A duplicate is then a business error, not a failed statement
// (which aborts a PostgreSQL transaction).
func OnDuplicateIDDoNothing(db *gorm.DB) string {
	if db.Dialector.Name() == "mysql" {
		return "ON DUPLICATE KEY UPDATE id = id"
	}
	return "ON CONFLICT (id) DO NOTHING"
}
