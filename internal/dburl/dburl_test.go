package dburl_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/dburl"
)

func TestParse(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]dburl.Target{
		"postgres://u:pw@db:5432/app?sslmode=disable": {Postgres: true, URL: "postgres://u:pw@db:5432/app?sslmode=disable"},
		"postgresql:///app?host=/run/postgresql":      {Postgres: true, URL: "postgresql:///app?host=/run/postgresql"},
		" ./app.db ":                                  {Path: "app.db"},
		"file:/x/app.db?_pragma=busy_timeout(1)":      {Path: "/x/app.db", Params: "_pragma=busy_timeout(1)"},
		"sqlite:///abs/x.db":                          {Path: "/abs/x.db"},
		"SQLite3://rel/x.db":                          {Path: "rel/x.db"},
	} {
		got, err := dburl.Parse(raw)
		require.NoError(t, err, raw)
		require.Equal(t, want, got, raw)
	}
	for raw, want := range map[string]string{
		"":                             "empty",
		"mysql://db/x":                 `unsupported scheme "mysql"`,
		"localhost:5432/app":           "looks like a host and port",
		":memory:":                     "in-memory SQLite database",
		"file:x.db?mode=memory":        "in-memory SQLite database",
		"file:x.db?a=%zz":              "parameters",
		"sqlite://":                    "no file",
		"sqlite://x.db?mode=ro":        "sqlite:// takes a file path only",
		"postgres:///app":              "no host",
		"postgres://u:secret@db:x/app": "invalid port",
	} {
		_, err := dburl.Parse(raw)
		require.ErrorIs(t, err, dburl.ErrInvalid, raw)
		require.ErrorContains(t, err, want, raw)
		require.NotContains(t, err.Error(), "secret", raw)
	}
}
