// Package dburl parses the database URLs the txoutbox CLI and the example
// service accept, so both accept the same forms and refuse the same
// mistakes with the same words.
package dburl

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

// ErrInvalid wraps every error of Parse.
var ErrInvalid = errors.New("invalid database URL")

// Kind names the database a Target opens.
type Kind string

// The databases a URL can name.
const (
	// SQLite is a SQLite file (Target.Path, Target.Params).
	SQLite Kind = "sqlite"
	// Postgres is PostgreSQL at a postgres:// URL (Target.URL).
	Postgres Kind = "postgres"
	// MySQL is MySQL or MariaDB at a mysql:// or mariadb:// URL
	// (Target.DSN, the go-sql-driver/mysql DSN it maps to).
	MySQL Kind = "mysql"
)

// DefaultMySQLPort is the port of a mysql:// URL that names none.
const DefaultMySQLPort = "3306"

// Target is a parsed database URL.
type Target struct {
	// Kind is the database.
	Kind Kind
	// URL is the URL as given (Postgres and MySQL).
	URL string
	// DSN is the go-sql-driver/mysql DSN (MySQL only): parseTime=true,
	// loc=UTC, and interpolateParams=true unless the URL sets it.
	DSN string
	// Path is the SQLite file (SQLite only).
	Path string
	// Params are the SQLite URI parameters of a file: URL, without '?'
	// (SQLite only).
	Params string
}

// Parse accepts postgres:// and postgresql:// URLs; mysql:// and
// mariadb:// URLs (mysql://user[:password]@host[:port]/db[?params], port
// 3306 by default, params passed on to go-sql-driver/mysql); and a SQLite
// file as a plain path (./app.db, /tmp/x.db), as file:path[?params]
// (SQLite URI parameters such as _pragma=cache_size(-20000)), or as
// sqlite://path or sqlite3://path (sqlite:///abs/path.db,
// sqlite://relative.db; no parameters). It refuses an in-memory SQLite
// database (each pooled connection would see a database of its own) and
// host:port/db without a scheme (it would become a file in a directory
// named host:port). raw must not be empty. The error wraps ErrInvalid and
// hides a password; it does not say where raw came from.
func Parse(raw string) (Target, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return Target{}, fmt.Errorf("%w: empty", ErrInvalid)
	}
	scheme, rest, hasScheme := strings.Cut(raw, "://")
	if hasScheme {
		switch strings.ToLower(scheme) {
		case "postgres", "postgresql":
			u, err := parseURL(raw)
			if err != nil {
				return Target{}, err
			}
			if u.Host == "" && u.Query().Get("host") == "" {
				return Target{}, fmt.Errorf("%w %q: no host (use postgres://user@host:5432/db)", ErrInvalid, Redact(raw))
			}
			return Target{Kind: Postgres, URL: raw}, nil
		case "mysql", "mariadb":
			return parseMySQL(raw)
		case "sqlite", "sqlite3":
			if rest == "" {
				return Target{}, fmt.Errorf("%w %q: no file (use sqlite:///path/file.db, or the path alone)", ErrInvalid, raw)
			}
			if strings.ContainsAny(rest, "?#") {
				return Target{}, fmt.Errorf("%w %q: %s:// takes a file path only (use file:path.db?... for parameters)", ErrInvalid, raw, scheme)
			}
			return sqliteFile(raw, rest, "")
		}
		return Target{}, fmt.Errorf("%w %q: unsupported scheme %q (use postgres://, mysql://, a SQLite file path, or file:path.db)", ErrInvalid, Redact(raw), scheme)
	}
	if path, ok := strings.CutPrefix(raw, "file:"); ok {
		path, params, _ := strings.Cut(path, "?")
		if path == "" {
			return Target{}, fmt.Errorf("%w %q: file: needs a path", ErrInvalid, raw)
		}
		if _, err := url.ParseQuery(params); err != nil {
			return Target{}, fmt.Errorf("%w %q: parameters: %v", ErrInvalid, raw, err)
		}
		return sqliteFile(raw, path, params)
	}
	if host, port, ok := strings.Cut(strings.SplitN(raw, "/", 2)[0], ":"); ok && host != "" && port != "" && strings.Trim(port, "0123456789") == "" {
		return Target{}, fmt.Errorf("%w %q: looks like a host and port; use postgres://user@%s:%s/db or mysql://user@%s:%s/db, or ./%s for a SQLite file of that name", ErrInvalid, Redact(raw), host, port, host, port, raw)
	}
	return sqliteFile(raw, raw, "")
}

func parseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("%w %q: %v", ErrInvalid, Redact(raw), err)
	}
	return u, nil
}

// parseMySQL maps a mysql:// URL to a go-sql-driver/mysql DSN. The stores
// read times as time.Time in UTC, so parseTime=true and loc=UTC are always
// set (a URL that asks otherwise is refused); interpolateParams=true sends
// each statement with its arguments in one round trip instead of a prepare
// and an execute, unless the URL sets it.
func parseMySQL(raw string) (Target, error) {
	u, err := parseURL(raw)
	if err != nil {
		return Target{}, err
	}
	bad := func(format string, args ...any) (Target, error) {
		return Target{}, fmt.Errorf("%w %q: %s", ErrInvalid, Redact(raw), fmt.Sprintf(format, args...))
	}
	if u.Hostname() == "" {
		return bad("no host (use mysql://user@host:3306/db)")
	}
	db := strings.TrimPrefix(u.Path, "/")
	if db == "" {
		return bad("no database (use mysql://user@host:3306/db)")
	}
	if strings.ContainsAny(db, "/?") {
		return bad("database name %q contains '/' or '?' (use mysql://user@host:3306/db)", db)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("parameters: %v", err)
	}
	if v := q.Get("parseTime"); q.Has("parseTime") && !strings.EqualFold(v, "true") && v != "1" {
		return bad("parseTime=%s: the stores read times as time.Time, so parseTime is always true", v)
	}
	if v := q.Get("loc"); q.Has("loc") && v != "UTC" {
		return bad("loc=%s: the stores keep times in UTC, so loc is always UTC", v)
	}
	cfg := mysql.NewConfig()
	cfg.User = u.User.Username()
	cfg.Passwd, _ = u.User.Password()
	cfg.Net = "tcp"
	port := u.Port()
	if port == "" {
		port = DefaultMySQLPort
	}
	cfg.Addr = net.JoinHostPort(u.Hostname(), port)
	cfg.DBName = db
	dsn := cfg.FormatDSN()
	if u.RawQuery != "" {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		// go-sql-driver/mysql reads DSN parameters in URL query syntax.
		dsn += sep + u.RawQuery
	}
	cfg, err = mysql.ParseDSN(dsn)
	if err != nil {
		return bad("parameters: %v", err)
	}
	cfg.ParseTime = true
	cfg.Loc = time.UTC
	if !q.Has("interpolateParams") {
		cfg.InterpolateParams = true
	}
	return Target{Kind: MySQL, URL: raw, DSN: cfg.FormatDSN()}, nil
}

// OpenMySQL opens a pool on the go-sql-driver/mysql DSN dsn and waits up
// to timeout for its first connection. gorm.io/driver/mysql asks a new pool
// for the server version without a deadline, which waits forever on a
// server that accepts the connection and never greets; handed this pool
// (mysql.Config.Conn), it reuses the connection made here. The caller
// closes the pool.
func OpenMySQL(ctx context.Context, dsn string, timeout time.Duration) (*sql.DB, error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(connector)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	return db, nil
}

func sqliteFile(raw, path, params string) (Target, error) {
	if path == ":memory:" || strings.Contains(params, "mode=memory") {
		return Target{}, fmt.Errorf("%w %q: an in-memory SQLite database is not shared by a pool's connections; use a file", ErrInvalid, raw)
	}
	return Target{Kind: SQLite, Path: filepath.Clean(path), Params: params}, nil
}

// Redact hides the password of a URL, also of one that does not parse.
func Redact(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	// Unparsable: hide everything between the scheme and the last '@'.
	if i := strings.LastIndex(raw, "@"); i >= 0 {
		if j := strings.Index(raw, "://"); j >= 0 && j < i {
			return raw[:j+3] + "xxxxx" + raw[i:]
		}
	}
	return raw
}
