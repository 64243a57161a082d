package cli_test

import (
	"bytes"
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/example_app/internal/cli"
	"github.com/txoutbox/txoutbox/internal/testdb"
)

// syncBuffer is a bytes.Buffer safe for the logger's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type run struct {
	code           int
	stdout, stderr string
	took           time.Duration
}

// mainWith runs cli.Main with args and an environment of env only.
func mainWith(ctx context.Context, env map[string]string, args ...string) run {
	var stdout, stderr syncBuffer
	start := time.Now()
	code := cli.Main(ctx, args, &stdout, &stderr, func(k string) string { return env[k] })
	return run{code: code, stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"-h"}, {"--help"}, {"demo", "-h"}, {"serve", "-help"}} {
		r := mainWith(t.Context(), nil, args...)
		require.Equal(t, cli.ExitOK, r.code, args)
		require.Empty(t, r.stderr)
		for _, want := range []string{"DATABASE_URL", "BROKER_URL", "DATA_DIR", "HTTP_ADDR", "TOPIC", "LOG_LEVEL",
			"amqp://", "nats://", "redis://", "kafka://", "example_app demo", "-n N", "Exit codes"} {
			require.Contains(t, r.stdout, want)
		}
		require.Contains(t, r.stdout, cli.DefaultDataDir())
	}
}

// Bad configuration: one line on stderr, exit code 2, nothing started.
func TestBadConfigExitsWithTwo(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"unsupported broker scheme", map[string]string{"BROKER_URL": "mqtt://broker:1883"}, nil, `unsupported scheme "mqtt"`},
		{"broker URL without scheme", map[string]string{"BROKER_URL": "127.0.0.1:5672"}, nil, "no scheme"},
		{"broker URL without host", map[string]string{"BROKER_URL": "amqp://"}, nil, "no host"},
		{"bad broker port", map[string]string{"BROKER_URL": "nats://nats:port"}, nil, "invalid port"},
		{"bad kafka list", map[string]string{"BROKER_URL": "kafka://k1,,k2"}, nil, "no host"},
		{"bad redis db", map[string]string{"BROKER_URL": "redis://r/x"}, nil, "invalid database number"},
		{"flag wins over env", map[string]string{"BROKER_URL": "nats://127.0.0.1:4222"}, []string{"-broker-url", "zmq://x"}, `unsupported scheme "zmq"`},
		{"unsupported database", map[string]string{"DATABASE_URL": "mssql://db/x"}, nil, `unsupported scheme "mssql"`},
		{"mysql without a database", map[string]string{"DATABASE_URL": "mysql://db"}, nil, `invalid database URL "mysql://db": no database`},
		{"database as host and port", map[string]string{"DATABASE_URL": "localhost:5432/test"}, nil, "DATABASE_URL: invalid database URL \"localhost:5432/test\": looks like a host and port"},
		{"in-memory database", nil, []string{"--database-url", ":memory:"}, "--database-url: invalid database URL \":memory:\": an in-memory SQLite database"},
		{"database flag named", map[string]string{"DATABASE_URL": "postgres://db/x"}, []string{"--database-url", "mssql://db/x"}, `--database-url: invalid database URL "mssql://db/x": unsupported scheme "mssql"`},
		{"database variable named", map[string]string{"DATABASE_URL": "mssql://db/x"}, nil, `example_app: DATABASE_URL: invalid database URL "mssql://db/x"`},
		{"broker flag named", nil, []string{"-broker-url", "zmq://x"}, `--broker-url: invalid broker URL`},
		{"broker variable named", map[string]string{"BROKER_URL": "zmq://x"}, nil, `example_app: BROKER_URL: invalid broker URL`},
		{"topic flag named", map[string]string{"TOPIC": "good"}, []string{"--topic", "orders.v1"}, "--topic: "},
		{"topic variable named", map[string]string{"TOPIC": "orders.v1"}, nil, "example_app: TOPIC: "},
		{"log level flag named", nil, []string{"--log-level", "loud"}, `--log-level "loud": use debug, info, warn or error`},
		{"log level variable named", map[string]string{"LOG_LEVEL": "loud"}, nil, `example_app: LOG_LEVEL "loud": use debug`},
		{"listen address flag named", map[string]string{"HTTP_ADDR": "127.0.0.1:0"}, []string{"--addr", "8080"}, `--addr "8080": `},
		{"listen address variable named", map[string]string{"HTTP_ADDR": "8080"}, nil, `example_app: HTTP_ADDR "8080": `},
		{"empty data directory flag named", nil, []string{"--data-dir", ""}, "--data-dir: invalid database URL: no database URL and no data directory"},
		{"postgres without host", map[string]string{"DATABASE_URL": "postgres:///test"}, nil, "no host"},
		{"bad topic", map[string]string{"TOPIC": "orders.v1"}, nil, "only letters"},
		{"bad log level", map[string]string{"LOG_LEVEL": "loud"}, nil, "LOG_LEVEL"},
		{"bad listen address", map[string]string{"HTTP_ADDR": "8080"}, nil, "HTTP_ADDR"},
		{"unknown flag", nil, []string{"-port", "1"}, "flag provided but not defined: -port"},
		{"stray argument", nil, []string{"start"}, `unexpected argument "start"`},
		{"demo without orders", nil, []string{"demo", "-n", "0"}, "must be positive"},
		{"demo with a bad flag value", nil, []string{"demo", "-n", "many"}, "invalid value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"DATA_DIR": dir}
			for k, v := range tc.env {
				env[k] = v
			}
			r := mainWith(t.Context(), env, tc.args...)
			require.Equal(t, cli.ExitUsage, r.code, r.stderr)
			require.Empty(t, r.stdout)
			require.Equal(t, 1, strings.Count(r.stderr, "\n"), "one line: %q", r.stderr)
			require.True(t, strings.HasPrefix(r.stderr, "example_app: "), r.stderr)
			require.Contains(t, r.stderr, tc.want)
		})
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries, "nothing was created")
}

func TestBadConfigHidesPasswords(t *testing.T) {
	t.Parallel()
	r := mainWith(t.Context(), map[string]string{"BROKER_URL": "amqp://user:s3cret@host:x/", "DATA_DIR": t.TempDir()})
	require.Equal(t, cli.ExitUsage, r.code)
	require.NotContains(t, r.stderr, "s3cret")
}

// The service runs on a SQLite file given as a plain path, as the
// txoutbox CLI accepts it, from the environment and from the flag.
func TestServeOnPlainSQLitePath(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  func(path string) map[string]string
		args func(path string) []string
	}{
		{"DATABASE_URL", func(p string) map[string]string { return map[string]string{"DATABASE_URL": p} }, func(string) []string { return nil }},
		{"--database-url", func(string) map[string]string { return nil }, func(p string) []string { return []string{"--database-url", p} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dataDir, dbDir := t.TempDir(), t.TempDir()
			path := filepath.Join(dbDir, "app.db")
			ctx, cancel := context.WithCancel(t.Context())
			var stdout, stderr syncBuffer
			done := make(chan int, 1)
			env := map[string]string{"DATA_DIR": dataDir, "HTTP_ADDR": "127.0.0.1:0"}
			for k, v := range tc.env(path) {
				env[k] = v
			}
			go func() {
				done <- cli.Main(ctx, tc.args(path), &stdout, &stderr, func(k string) string { return env[k] })
			}()
			require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "listening on http://127.0.0.1:") },
				10*time.Second, 10*time.Millisecond, stderr.String())
			require.Contains(t, stderr.String(), `database="sqlite file `+path+`"`)
			require.NotContains(t, stderr.String(), "data directory:")
			cancel()
			select {
			case code := <-done:
				require.Equal(t, cli.ExitOK, code, stderr.String())
			case <-time.After(15 * time.Second):
				t.Fatal("the service did not stop")
			}
			require.FileExists(t, path)
			entries, err := os.ReadDir(dataDir)
			require.NoError(t, err)
			require.Empty(t, entries, "nothing in the data directory")
		})
	}
}

// A broker or database that is not there: a clear error within seconds,
// exit code 1.
func TestUnreachableExitsWithOne(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, key, url, want string
		args                 []string
	}{
		{"amqp", "BROKER_URL", "amqp://guest:guest@127.0.0.1:1/", "broker unreachable: amqp at 127.0.0.1:1", []string{"demo"}},
		{"nats", "BROKER_URL", "nats://127.0.0.1:1", "broker unreachable: nats at 127.0.0.1:1", []string{"demo"}},
		{"redis", "BROKER_URL", "redis://127.0.0.1:1", "broker unreachable: redis at 127.0.0.1:1", []string{"demo"}},
		{"kafka", "BROKER_URL", "kafka://127.0.0.1:1", "broker unreachable: kafka at 127.0.0.1:1", []string{"demo"}},
		{"postgres", "DATABASE_URL", "postgres://postgres@127.0.0.1:1/test?sslmode=disable", "database unreachable: postgres postgres://postgres@127.0.0.1:1/test", nil},
		{"postgres-demo", "DATABASE_URL", "postgres://postgres@127.0.0.1:1/test?sslmode=disable", "database unreachable: postgres postgres://postgres@127.0.0.1:1/test", []string{"demo"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			env := map[string]string{"DATA_DIR": dir, "HTTP_ADDR": "127.0.0.1:0", tc.key: tc.url}
			r := mainWith(t.Context(), env, tc.args...)
			require.Equal(t, cli.ExitFailure, r.code, r.stderr)
			require.Contains(t, r.stderr, tc.want)
			require.Less(t, r.took, 10*time.Second)
			require.Empty(t, r.stdout)
			if len(tc.args) > 0 {
				entries, err := os.ReadDir(dir)
				require.NoError(t, err)
				require.Empty(t, entries, "the demo removes its database file also when it could not start")
			}
		})
	}
}

// The service starts while its broker does not answer: it serves, says
// that the broker is down, and stops cleanly.
func TestServeStartsWithoutBroker(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	env := map[string]string{"DATA_DIR": t.TempDir(), "HTTP_ADDR": "127.0.0.1:0", "BROKER_URL": "amqp://guest:guest@127.0.0.1:1/"}
	go func() { done <- cli.Main(ctx, nil, &stdout, &stderr, func(k string) string { return env[k] }) }()
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "listening on http://127.0.0.1:") },
		10*time.Second, 10*time.Millisecond, stderr.String())
	require.Contains(t, stderr.String(), "broker not reachable; retrying in the background")
	require.Contains(t, stderr.String(), "broker_connected=false")
	cancel()
	select {
	case code := <-done:
		require.Equal(t, cli.ExitOK, code, stderr.String())
	case <-time.After(15 * time.Second):
		t.Fatal("the service did not stop")
	}
}

// The service starts on the embedded default and stops cleanly when its
// context ends (main cancels it on SIGINT and SIGTERM).
func TestServeStopsGracefully(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	env := map[string]string{"DATA_DIR": dir, "HTTP_ADDR": "127.0.0.1:0"}
	go func() { done <- cli.Main(ctx, nil, &stdout, &stderr, func(k string) string { return env[k] }) }()
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "listening on http://127.0.0.1:") },
		10*time.Second, 10*time.Millisecond, stderr.String())
	require.Contains(t, stderr.String(), "data directory: "+dir)
	cancel()
	select {
	case code := <-done:
		require.Equal(t, cli.ExitOK, code, stderr.String())
	case <-time.After(15 * time.Second):
		t.Fatal("the service did not stop within 15s")
	}
	require.Contains(t, stderr.String(), "shutting down")
	require.FileExists(t, dir+"/orders.db")
}

// The demo on the embedded default (SQLite + GoChannel), in process: it
// passes, prints the summary, and removes its database file.
func TestDemoEmbedded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	r := mainWith(t.Context(), map[string]string{"DATA_DIR": dir}, "demo", "-n", "120", "-concurrency", "8")
	require.Equal(t, cli.ExitOK, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	for _, want := range []string{
		"sqlite file " + dir, "gochannel",
		"commands:    324 sent, 240 accepted, 84 rejected as the rules require, 0 unexpected answers",
		"events:      240 committed, 240 published, 240 projected; inbox: 240 rows",
		"latency:     commit to projection p50 ",
		"             (per event: from its command's commit to its projection, through relay, broker and consumer, queueing included)\n",
		"result:      OK: all 240 events of 120 orders arrived exactly once in the read model",
	} {
		require.Contains(t, r.stdout, want)
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries, "the demo removes its database file")
}

// The demo on PostgreSQL (a schema of its own) with GoChannel.
func TestDemoPostgres(t *testing.T) {
	t.Parallel()
	_, schema := testdb.OpenPostgres(t)
	env := map[string]string{"DATABASE_URL": testdb.SchemaURL(t, schema)}
	r := mainWith(t.Context(), env, "demo", "-n", "60", "-keep")
	require.Equal(t, cli.ExitOK, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	require.Contains(t, r.stdout, "on postgres postgres://")
	require.Contains(t, r.stdout, "result:      OK: all 120 events of 60 orders")
}

// The demo on MariaDB (a database of its own) with GoChannel.
func TestDemoMySQL(t *testing.T) {
	t.Parallel()
	_, name := testdb.OpenMySQL(t)
	u, err := url.Parse(testdb.MySQLURL())
	require.NoError(t, err)
	u.Path = "/" + name
	r := mainWith(t.Context(), map[string]string{"DATABASE_URL": u.String()}, "demo", "-n", "60", "-keep")
	require.Equal(t, cli.ExitOK, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	require.Contains(t, r.stdout, "on mysql mysql://")
	require.Contains(t, r.stdout, "result:      OK: all 120 events of 60 orders")
}
