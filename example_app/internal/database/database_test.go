package database

import (
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

	for _, tc := range []struct{ url, want string }{
		{"mysql://db/x", `unsupported scheme "mysql"`},
		{"db:5432/app", "no scheme"},
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

func TestWithConnectTimeout(t *testing.T) {
	t.Parallel()
	require.Equal(t, "postgres://db/x?connect_timeout=5&sslmode=disable", withConnectTimeout("postgres://db/x?sslmode=disable", 5*time.Second))
	require.Equal(t, "postgres://db/x?connect_timeout=9", withConnectTimeout("postgres://db/x?connect_timeout=9", 5*time.Second))
}
