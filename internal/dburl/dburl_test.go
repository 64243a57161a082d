package dburl_test

import (
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/dburl"
)

func TestParse(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]dburl.Target{
		"postgres://u:pw@db:5432/app?sslmode=disable": {Kind: dburl.Postgres, URL: "postgres://u:pw@db:5432/app?sslmode=disable"},
		"postgresql:///app?host=/run/postgresql":      {Kind: dburl.Postgres, URL: "postgresql:///app?host=/run/postgresql"},
		"mysql://root@127.0.0.1:3306/test": {
			Kind: dburl.MySQL, URL: "mysql://root@127.0.0.1:3306/test",
			DSN: "root@tcp(127.0.0.1:3306)/test?interpolateParams=true&parseTime=true",
		},
		" ./app.db ":                             {Kind: dburl.SQLite, Path: "app.db"},
		"file:/x/app.db?_pragma=busy_timeout(1)": {Kind: dburl.SQLite, Path: "/x/app.db", Params: "_pragma=busy_timeout(1)"},
		"sqlite:///abs/x.db":                     {Kind: dburl.SQLite, Path: "/abs/x.db"},
		"SQLite3://rel/x.db":                     {Kind: dburl.SQLite, Path: "rel/x.db"},
	} {
		got, err := dburl.Parse(raw)
		require.NoError(t, err, raw)
		require.Equal(t, want, got, raw)
	}
	for raw, want := range map[string]string{
		"":                                         "empty",
		"mssql://db/x":                             `unsupported scheme "mssql"`,
		"localhost:5432/app":                       "looks like a host and port",
		":memory:":                                 "in-memory SQLite database",
		"file:x.db?mode=memory":                    "in-memory SQLite database",
		"file:x.db?a=%zz":                          "parameters",
		"sqlite://":                                "no file",
		"sqlite://x.db?mode=ro":                    "sqlite:// takes a file path only",
		"postgres:///app":                          "no host",
		"postgres://u:secret@db:x/app":             "invalid port",
		"mysql:///app":                             "no host",
		"mysql://u:secret@db:3306":                 "no database",
		"mysql://u:secret@db:3306/":                "no database",
		"mysql://u:secret@db/a/b":                  "contains '/'",
		"mysql://u:secret@db/a%3Fb":                "or '?'",
		"mysql://u:secret@db:x/app":                "invalid port",
		"mysql://u:secret@db/app?parseTime=false":  "parseTime is always true",
		"mysql://u:secret@db/app?loc=Local":        "loc is always UTC",
		"mysql://u:secret@db/app?a=%zz":            "parameters",
		"mysql://u:secret@db/app?multiStatements=": "parameters: invalid bool value",
	} {
		_, err := dburl.Parse(raw)
		require.ErrorIs(t, err, dburl.ErrInvalid, raw)
		require.ErrorContains(t, err, want, raw)
		require.NotContains(t, err.Error(), "secret", raw)
	}
}

// TestParseMySQL checks the go-sql-driver settings a mysql:// URL maps to.
func TestParseMySQL(t *testing.T) {
	t.Parallel()
	parse := func(raw string) *mysql.Config {
		t.Helper()
		got, err := dburl.Parse(raw)
		require.NoError(t, err, raw)
		require.Equal(t, dburl.MySQL, got.Kind, raw)
		require.Equal(t, raw, got.URL)
		cfg, err := mysql.ParseDSN(got.DSN)
		require.NoError(t, err, got.DSN)
		return cfg
	}

	cfg := parse("mariadb://app:p%40ss:w@db.example/orders")
	require.Equal(t, "app", cfg.User)
	require.Equal(t, "p@ss:w", cfg.Passwd)
	require.Equal(t, "tcp", cfg.Net)
	require.Equal(t, "db.example:3306", cfg.Addr, "port 3306 by default")
	require.Equal(t, "orders", cfg.DBName)
	require.True(t, cfg.ParseTime)
	require.Equal(t, time.UTC, cfg.Loc)
	require.True(t, cfg.InterpolateParams, "on unless the URL says otherwise")

	cfg = parse("mysql://root@[::1]:3307/test?interpolateParams=false&timeout=2s&tls=skip-verify&sql_mode=%27ANSI_QUOTES%27&parseTime=true&loc=UTC")
	require.Equal(t, "[::1]:3307", cfg.Addr)
	require.False(t, cfg.InterpolateParams, "the URL turns it off")
	require.Equal(t, 2*time.Second, cfg.Timeout)
	require.Equal(t, "skip-verify", cfg.TLSConfig)
	require.Equal(t, map[string]string{"sql_mode": "'ANSI_QUOTES'"}, cfg.Params, "other parameters are system variables")
	require.True(t, cfg.ParseTime)
	require.Equal(t, time.UTC, cfg.Loc)
}

func TestRedact(t *testing.T) {
	t.Parallel()
	require.Equal(t, "mysql://app:xxxxx@db:3306/x", dburl.Redact("mysql://app:secret@db:3306/x"))
	require.Equal(t, "postgres://app:xxxxx@db/x", dburl.Redact("postgres://app:secret@db/x"))
}
