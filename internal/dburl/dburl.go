// Package dburl parses the database URLs the txoutbox CLI and the example
// service accept, so both accept the same forms and refuse the same
// mistakes with the same words.
package dburl

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
)

// ErrInvalid wraps every error of Parse.
var ErrInvalid = errors.New("invalid database URL")

// Target is a parsed database URL: PostgreSQL (URL as given) or a SQLite
// file (Path, with SQLite URI parameters Params).
type Target struct {
	// Postgres is true for PostgreSQL, false for SQLite.
	Postgres bool
	// URL is the PostgreSQL URL as given.
	URL string
	// Path is the SQLite file.
	Path string
	// Params are the SQLite URI parameters of a file: URL, without '?'.
	Params string
}

// Parse accepts postgres:// and postgresql:// URLs, and a SQLite file as
// a plain path (./app.db, /tmp/x.db), as file:path[?params] (SQLite URI
// parameters such as _pragma=cache_size(-20000)), or as sqlite://path or
// sqlite3://path (sqlite:///abs/path.db, sqlite://relative.db; no
// parameters). It refuses an in-memory SQLite database (each pooled
// connection would see a database of its own) and host:port/db without a
// scheme (it would become a file in a directory named host:port). raw
// must not be empty. The error wraps ErrInvalid and hides a password;
// it does not say where raw came from.
func Parse(raw string) (Target, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return Target{}, fmt.Errorf("%w: empty", ErrInvalid)
	}
	scheme, rest, hasScheme := strings.Cut(raw, "://")
	if hasScheme {
		switch strings.ToLower(scheme) {
		case "postgres", "postgresql":
			u, err := url.Parse(raw)
			if err != nil {
				var uerr *url.Error
				if errors.As(err, &uerr) {
					err = uerr.Err
				}
				return Target{}, fmt.Errorf("%w %q: %v", ErrInvalid, Redact(raw), err)
			}
			if u.Host == "" && u.Query().Get("host") == "" {
				return Target{}, fmt.Errorf("%w %q: no host (use postgres://user@host:5432/db)", ErrInvalid, Redact(raw))
			}
			return Target{Postgres: true, URL: raw}, nil
		case "sqlite", "sqlite3":
			if rest == "" {
				return Target{}, fmt.Errorf("%w %q: no file (use sqlite:///path/file.db, or the path alone)", ErrInvalid, raw)
			}
			if strings.ContainsAny(rest, "?#") {
				return Target{}, fmt.Errorf("%w %q: %s:// takes a file path only (use file:path.db?... for parameters)", ErrInvalid, raw, scheme)
			}
			return sqliteFile(raw, rest, "")
		}
		return Target{}, fmt.Errorf("%w %q: unsupported scheme %q (use postgres://, a SQLite file path, or file:path.db)", ErrInvalid, Redact(raw), scheme)
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
		return Target{}, fmt.Errorf("%w %q: looks like a host and port; use postgres://user@%s:%s/db for PostgreSQL, or ./%s for a SQLite file of that name", ErrInvalid, Redact(raw), host, port, raw)
	}
	return sqliteFile(raw, raw, "")
}

func sqliteFile(raw, path, params string) (Target, error) {
	if path == ":memory:" || strings.Contains(params, "mode=memory") {
		return Target{}, fmt.Errorf("%w %q: an in-memory SQLite database is not shared by a pool's connections; use a file", ErrInvalid, raw)
	}
	return Target{Path: filepath.Clean(path), Params: params}, nil
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
