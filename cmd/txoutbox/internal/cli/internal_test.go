package cli

import (
	"runtime/debug"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/dburl"
)

func TestParseDuration(t *testing.T) {
	t.Parallel()
	good := map[string]time.Duration{
		"0":     0,
		"90m":   90 * time.Minute,
		"36h":   36 * time.Hour,
		"7d":    7 * 24 * time.Hour,
		"1d12h": 36 * time.Hour,
		"2d30m": 48*time.Hour + 30*time.Minute,
		"1.5h":  90 * time.Minute,
		"0d":    0,
		"365d":  365 * 24 * time.Hour,
	}
	for s, want := range good {
		got, err := parseDuration(s)
		require.NoError(t, err, s)
		require.Equal(t, want, got, s)
	}
	for _, s := range []string{"", "d", "7", "7days", "-1h", "-1d", "1d-1h", "xd", "1d1d", "1h30m5"} {
		_, err := parseDuration(s)
		require.Error(t, err, s)
	}
}

func TestFormatAge(t *testing.T) {
	t.Parallel()
	require.Equal(t, "-", formatAge(0))
	require.Equal(t, "12ms", formatAge(12345*time.Microsecond))
	require.Equal(t, "3m4s", formatAge(3*time.Minute+4400*time.Millisecond))
	require.Equal(t, "50h0m0s", formatAge(50*time.Hour))
}

func TestOneLine(t *testing.T) {
	t.Parallel()
	require.Equal(t, "a b c", oneLine("a\n b\t\tc ", 10))
	require.Equal(t, "abcd…", oneLine("abcdefgh", 5))
	require.Equal(t, "äöü", oneLine("äöü", 3))
}

func TestParseDatabaseURL(t *testing.T) {
	t.Parallel()
	pg, err := parseDatabaseURL("postgres://u:pw@db:5432/app?sslmode=disable", 3*time.Second)
	require.NoError(t, err)
	require.Equal(t, dburl.Postgres, pg.kind)
	require.Equal(t, "postgres://u:pw@db:5432/app?connect_timeout=3&sslmode=disable", pg.dsn)
	require.Equal(t, "postgres://u:xxxxx@db:5432/app", pg.display)

	pg, err = parseDatabaseURL("postgresql://db/app?connect_timeout=9", time.Second)
	require.NoError(t, err)
	require.Equal(t, "postgresql://db/app?connect_timeout=9", pg.dsn, "a connect_timeout given is kept")

	for raw, path := range map[string]string{
		"app.db":                 "app.db",
		"/var/lib/app/app.db":    "/var/lib/app/app.db",
		"sqlite:///var/app.db":   "/var/app.db",
		"sqlite://rel.db":        "rel.db",
		"file:app.db":            "app.db",
		"file:/x/app.db?mode=rw": "/x/app.db",
	} {
		tg, err := parseDatabaseURL(raw, time.Second)
		require.NoError(t, err, raw)
		require.Equal(t, dburl.SQLite, tg.kind, raw)
		require.Equal(t, path, tg.path, raw)
		require.Contains(t, tg.dsn, "_pragma=busy_timeout(10000)", raw)
	}
	tg, err := parseDatabaseURL("file:app.db?_pragma=busy_timeout(1)", time.Second)
	require.NoError(t, err)
	require.Equal(t, "file:app.db?_pragma=busy_timeout(1)", tg.dsn)

	my, err := parseDatabaseURL("mysql://app:secret@db/orders?sql_mode=%27ANSI%27", 3*time.Second)
	require.NoError(t, err)
	require.Equal(t, dburl.MySQL, my.kind)
	require.Equal(t, "mysql://app:xxxxx@db/orders", my.display)
	cfg, err := mysql.ParseDSN(my.dsn)
	require.NoError(t, err)
	require.Equal(t, "db:3306", cfg.Addr)
	require.Equal(t, 3*time.Second, cfg.Timeout, "the connect timeout is the dial timeout")
	require.True(t, cfg.ParseTime)
	require.True(t, cfg.InterpolateParams)
	require.Equal(t, map[string]string{"sql_mode": "'ANSI'"}, cfg.Params)

	my, err = parseDatabaseURL("mariadb://app@db/orders?timeout=9s", time.Second)
	require.NoError(t, err)
	cfg, err = mysql.ParseDSN(my.dsn)
	require.NoError(t, err)
	require.Equal(t, 9*time.Second, cfg.Timeout, "a timeout given is kept")
}

func TestVersionOf(t *testing.T) {
	t.Parallel()
	require.Equal(t, buildVersion{Version: "(devel)", Go: "unknown"}, versionOf(nil))
	require.Equal(t, "txoutbox (devel) unknown", versionOf(nil).String())

	// go install github.com/txoutbox/txoutbox/cmd/txoutbox@v1.2.3
	installed := &debug.BuildInfo{GoVersion: "go1.24.1", Main: debug.Module{Path: modulePath, Version: "v1.2.3"}}
	require.Equal(t, "txoutbox v1.2.3 go1.24.1", versionOf(installed).String())

	// go build in a checkout with uncommitted changes.
	checkout := &debug.BuildInfo{GoVersion: "go1.24.1", Main: debug.Module{Path: modulePath, Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.modified", Value: "true"},
	}}
	v := versionOf(checkout)
	require.Equal(t, buildVersion{Version: "(devel)", Revision: "0123abcd", Modified: true, Go: "go1.24.1"}, v)
	require.Equal(t, "txoutbox (devel) (revision 0123abcd, modified) go1.24.1", v.String())
	checkout.Settings[2].Value = "false"
	require.Equal(t, "txoutbox (devel) (revision 0123abcd) go1.24.1", versionOf(checkout).String())

	// Built into another main module: the dependency's version.
	dep := &debug.BuildInfo{GoVersion: "go1.24.1", Main: debug.Module{Path: "example.com/ops"}, Deps: []*debug.Module{
		{Path: "github.com/spf13/cobra", Version: "v1.10.2"}, {Path: modulePath, Version: "v0.9.0"},
	}}
	require.Equal(t, "v0.9.0", versionOf(dep).Version)
	// A test binary has no main module version.
	require.Equal(t, "(devel)", versionOf(&debug.BuildInfo{GoVersion: "go1.24.1"}).Version)
}
