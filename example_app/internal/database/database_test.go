package database

import (
	"net"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/testdb"
)

func TestParseURL(t *testing.T) {
	t.Parallel()
	c, err := ParseURL("", "/data")
	require.NoError(t, err)
	require.Equal(t, Config{Dialect: SQLite, Path: filepath.Join("/data", DefaultFile)}, c)
	require.Equal(t, "sqlite file /data/orders.db", c.String())

	c, err = ParseURL("sqlite:///var/lib/app/x.db", "/data")
	require.NoError(t, err)
	require.Equal(t, Config{Dialect: SQLite, Path: "/var/lib/app/x.db"}, c)

	c, err = ParseURL("postgres://u:secret@db:5432/app?sslmode=disable", "")
	require.NoError(t, err)
	require.Equal(t, Postgres, c.Dialect)
	require.Equal(t, "postgres postgres://u:xxxxx@db:5432/app", c.String())

	c, err = ParseURL("postgresql://db/app", "")
	require.NoError(t, err)
	require.Equal(t, Postgres, c.Dialect)

	c, err = ParseURL("mysql://u:secret@db/app?timeout=3s", "")
	require.NoError(t, err)
	require.Equal(t, Config{
		Dialect: MySQL, URL: "mysql://u:secret@db/app?timeout=3s",
		DSN: "u:secret@tcp(db:3306)/app?interpolateParams=true&parseTime=true&timeout=3s",
	}, c)
	require.Equal(t, "mysql mysql://u:xxxxx@db/app", c.String())

	c, err = ParseURL("mariadb://db/app", "")
	require.NoError(t, err)
	require.Equal(t, MySQL, c.Dialect)

	// A SQLite file in every form the txoutbox CLI accepts.
	for _, tc := range []struct {
		url  string
		want Config
	}{
		{"./app.db", Config{Dialect: SQLite, Path: "app.db"}},
		{"app.db", Config{Dialect: SQLite, Path: "app.db"}},
		{"/tmp/x.db", Config{Dialect: SQLite, Path: "/tmp/x.db"}},
		{"  /tmp/x.db ", Config{Dialect: SQLite, Path: "/tmp/x.db"}},
		{"../data/x.db", Config{Dialect: SQLite, Path: "../data/x.db"}},
		{"file:/tmp/x.db", Config{Dialect: SQLite, Path: "/tmp/x.db"}},
		{"file:x.db?_pragma=cache_size(-2000)", Config{Dialect: SQLite, Path: "x.db", Params: "_pragma=cache_size(-2000)"}},
		{"sqlite://rel/x.db", Config{Dialect: SQLite, Path: "rel/x.db"}},
		{"sqlite3:///abs/x.db", Config{Dialect: SQLite, Path: "/abs/x.db"}},
		{"SQLite:///abs/x.db", Config{Dialect: SQLite, Path: "/abs/x.db"}},
	} {
		c, err := ParseURL(tc.url, "/data")
		require.NoError(t, err, tc.url)
		require.Equal(t, tc.want, c, tc.url)
	}

	for _, tc := range []struct{ url, want string }{
		{"mssql://db/x", `unsupported scheme "mssql"`},
		{"mysql://db", "no database"},
		{"db:5432/app", `"db:5432/app": looks like a host and port; use postgres://user@db:5432/db or mysql://user@db:5432/db, or ./db:5432/app for a SQLite file of that name`},
		{"localhost:5432", "looks like a host and port"},
		{":memory:", "in-memory SQLite database"},
		{"file::memory:?cache=shared", "in-memory SQLite database"},
		{"file:x.db?mode=memory", "in-memory SQLite database"},
		{"file:", "file: needs a path"},
		{"file:x.db?a=%zz", "parameters"},
		{"sqlite3://x.db?mode=ro", "sqlite3:// takes a file path only"},
		{"postgres:///app", "no host"},
		{"postgres://db:x/app", "invalid port"},
		{"sqlite://", "no file"},
		{"sqlite:///x.db?mode=ro", "file path only"},
	} {
		_, err := ParseURL(tc.url, "/data")
		require.ErrorIs(t, err, ErrInvalidURL, tc.url)
		require.ErrorContains(t, err, tc.want, tc.url)
	}
	_, err = ParseURL("", "")
	require.ErrorIs(t, err, ErrInvalidURL)
	_, err = ParseURL("postgres://u:secret@db:x/app", "")
	require.NotContains(t, err.Error(), "secret")
}

func TestOpen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sub", "dir", "app.db")
	db, err := Open(t.Context(), Config{Dialect: SQLite, Path: path}, time.Second)
	require.NoError(t, err, "the directory is created")
	var mode string
	require.NoError(t, db.Raw("PRAGMA journal_mode").Scan(&mode).Error)
	require.Equal(t, "wal", mode)
	require.NoError(t, Close(db))

	db, err = Open(t.Context(), Config{Dialect: Postgres, URL: testdb.URL()}, 5*time.Second)
	require.NoError(t, err)
	require.NoError(t, Close(db))

	start := time.Now()
	_, err = Open(t.Context(), Config{Dialect: Postgres, URL: "postgres://postgres@127.0.0.1:1/x?sslmode=disable"}, time.Second)
	require.ErrorIs(t, err, ErrUnreachable)
	require.Less(t, time.Since(start), 5*time.Second)
}

func TestOpenMySQL(t *testing.T) {
	t.Parallel()
	_, name := testdb.OpenMySQL(t)
	u, err := url.Parse(testdb.MySQLURL())
	require.NoError(t, err)
	u.Path = "/" + name
	cfg, err := ParseURL(u.String(), "")
	require.NoError(t, err)
	db, err := Open(t.Context(), cfg, 5*time.Second)
	require.NoError(t, err)
	defer Close(db)
	var got time.Time
	require.NoError(t, db.Raw("SELECT TIMESTAMP '2024-05-06 07:08:09'").Scan(&got).Error)
	require.Equal(t, time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC), got, "times are parsed, in UTC")

	// A duplicate id inserts nothing and fails no statement.
	require.NoError(t, db.Exec("CREATE TABLE dup (id VARCHAR(8) PRIMARY KEY, n INT)").Error)
	insert := "INSERT INTO dup (id, n) VALUES (?, ?) " + OnDuplicateIDDoNothing(db)
	res := db.Exec(insert, "a", 1)
	require.NoError(t, res.Error)
	require.EqualValues(t, 1, res.RowsAffected)
	res = db.Exec(insert, "a", 2)
	require.NoError(t, res.Error)
	require.Zero(t, res.RowsAffected)
	require.EqualValues(t, 1, testdb.Count(t, db, "dup", "id = 'a' AND n = 1"))

	start := time.Now()
	cfg, err = ParseURL("mysql://root@127.0.0.1:1/x", "")
	require.NoError(t, err)
	_, err = Open(t.Context(), cfg, time.Second)
	require.ErrorIs(t, err, ErrUnreachable)
	require.Less(t, time.Since(start), 5*time.Second)

	// A server that accepts the connection and never greets.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				_ = c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	start = time.Now()
	cfg, err = ParseURL("mysql://root@"+ln.Addr().String()+"/x", "")
	require.NoError(t, err)
	_, err = Open(t.Context(), cfg, time.Second)
	require.ErrorIs(t, err, ErrUnreachable)
	require.Less(t, time.Since(start), 5*time.Second)
}

func TestSQLiteDSN(t *testing.T) {
	t.Parallel()
	require.Equal(t, "file:/x.db?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate", SQLiteDSN("/x.db"))
	require.Equal(t, "file:/x.db?_pragma=busy_timeout(500)&_pragma=cache_size(-2000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate",
		sqliteDSN("/x.db", "_pragma=busy_timeout(500)&_pragma=cache_size(-2000)"), "a pragma given replaces the default")
}

// A plain path and a file: URL with parameters open, with the parameters
// applied.
func TestOpenPlainPath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c, err := ParseURL(filepath.Join(dir, "plain.db"), "")
	require.NoError(t, err)
	db, err := Open(t.Context(), c, time.Second)
	require.NoError(t, err)
	require.NoError(t, Close(db))
	require.FileExists(t, filepath.Join(dir, "plain.db"))

	c, err = ParseURL("file:"+filepath.Join(dir, "params.db")+"?_pragma=cache_size(-1234)", "")
	require.NoError(t, err)
	db, err = Open(t.Context(), c, time.Second)
	require.NoError(t, err)
	var size int
	require.NoError(t, db.Raw("PRAGMA cache_size").Scan(&size).Error)
	require.Equal(t, -1234, size)
	var mode string
	require.NoError(t, db.Raw("PRAGMA journal_mode").Scan(&mode).Error)
	require.Equal(t, "wal", mode, "the defaults still apply")
	require.NoError(t, Close(db))
}

func TestWithConnectTimeout(t *testing.T) {
	t.Parallel()
	require.Equal(t, "postgres://db/x?connect_timeout=5&sslmode=disable", withConnectTimeout("postgres://db/x?sslmode=disable", 5*time.Second))
	require.Equal(t, "postgres://db/x?connect_timeout=9", withConnectTimeout("postgres://db/x?connect_timeout=9", 5*time.Second))
}
