//go:build chaos

package chaos_test

import (
	"bufio"
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/testdb"
)

// run runs a command with a timeout and returns its combined output.
func run(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// withAppName returns dsn with application_name set, so a test can find
// its connections in pg_stat_activity.
func withAppName(t *testing.T, dsn, name string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	return u.String()
}

// pgCluster returns the version and name of the local PostgreSQL cluster
// that serves TEST_DATABASE_URL, for pg_ctlcluster.
func pgCluster(t *testing.T) (version, name string) {
	t.Helper()
	u, err := url.Parse(testdb.URL())
	require.NoError(t, err)
	switch u.Hostname() {
	case "127.0.0.1", "localhost", "::1", "":
	default:
		t.Fatalf("TestPostgresRestart restarts PostgreSQL with pg_ctlcluster, so TEST_DATABASE_URL must point at this machine, not %q", u.Hostname())
	}
	port := cmp.Or(u.Port(), "5432")
	if out, err := run(10*time.Second, "pg_lsclusters", "-h"); err == nil {
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 3 && f[2] == port {
				return f[0], f[1]
			}
		}
	}
	entries, err := os.ReadDir("/etc/postgresql")
	require.NoError(t, err, "no local PostgreSQL cluster found (pg_lsclusters, /etc/postgresql): TestPostgresRestart needs one it may restart")
	require.Len(t, entries, 1, "several PostgreSQL versions in /etc/postgresql and pg_lsclusters did not say which serves port %s", port)
	return entries[0].Name(), "main"
}

// postgresUp reports whether PostgreSQL at TEST_DATABASE_URL answers a query.
func postgresUp() bool {
	db, err := sql.Open("pgx", testdb.URL())
	if err != nil {
		return false
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return db.PingContext(ctx) == nil
}

// restartPostgres restarts the local cluster and waits until it answers.
func restartPostgres(t *testing.T, version, name string) {
	t.Helper()
	out, err := run(2*time.Minute, "pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart")
	require.NoError(t, err, "pg_ctlcluster %s %s restart: %s", version, name, out)
	eventually(t, 60*time.Second, 100*time.Millisecond, func() (bool, string) {
		return postgresUp(), "PostgreSQL not answering"
	}, "PostgreSQL did not come back after restart")
}

// ensurePostgres starts the local cluster if it does not answer. Tests that
// stop or restart PostgreSQL call it from t.Cleanup, so a failing test never
// leaves it down.
func ensurePostgres(t *testing.T, version, name string) {
	if postgresUp() {
		return
	}
	out, err := run(2*time.Minute, "pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start")
	if err != nil {
		t.Errorf("PostgreSQL is down and could not be started (pg_ctlcluster %s %s start: %v: %s); start it by hand", version, name, err, out)
		return
	}
	for range 300 {
		if postgresUp() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("PostgreSQL %s/%s does not answer 30s after start; check /var/log/postgresql", version, name)
}

// DefaultAMQPURL is the RabbitMQ used when TEST_AMQP_URL is not set.
const DefaultAMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

func amqpURL() string { return cmp.Or(os.Getenv("TEST_AMQP_URL"), DefaultAMQPURL) }

// amqpAddr returns host:port of amqpURL, and fails unless it is this
// machine: the test stops that RabbitMQ with rabbitmqctl.
func amqpAddr(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(amqpURL())
	require.NoError(t, err)
	switch u.Hostname() {
	case "127.0.0.1", "localhost", "::1":
	default:
		t.Fatalf("TestBrokerOutage stops RabbitMQ with rabbitmqctl, so TEST_AMQP_URL must point at this machine, not %q", u.Hostname())
	}
	return net.JoinHostPort(u.Hostname(), cmp.Or(u.Port(), "5672"))
}

// portOpen reports whether something accepts TCP connections at addr.
func portOpen(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// rabbitmqctl runs rabbitmqctl with args.
func rabbitmqctl(args ...string) (string, error) {
	return run(2*time.Minute, "rabbitmqctl", args...)
}

// ensureRabbitMQ starts the RabbitMQ application if its port does not
// answer, and waits for it. Called from t.Cleanup by the test that stops it.
func ensureRabbitMQ(t *testing.T, addr string) {
	if portOpen(addr) {
		return
	}
	if out, err := rabbitmqctl("start_app"); err != nil {
		t.Errorf("RabbitMQ is down and could not be started (rabbitmqctl start_app: %v: %s); start it by hand", err, out)
		return
	}
	if out, err := rabbitmqctl("await_startup"); err != nil {
		t.Errorf("rabbitmqctl await_startup: %v: %s", err, out)
	}
	for range 300 {
		if portOpen(addr) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("RabbitMQ port %s closed 30s after start_app", addr)
}

// The local MariaDB server's init script, and the file it needs: without
// /etc/mysql/debian.cnf its status check (mariadb-admin ping) always fails,
// so its start waits 30 s and exits 1 with the server up, and its stop
// falls back to signalling every mariadbd by name.
const (
	mariadbInit      = "/etc/init.d/mariadb"
	mariadbInitCreds = "/etc/mysql/debian.cnf"
	mariadbServer    = "/usr/sbin/mariadbd"
)

// mariadbDSN returns the go-sql-driver DSN of the MariaDB server at
// TEST_MYSQL_URL, with no database and a 2 s connect timeout, and fails
// unless that server is this machine: TestMariaDBRestart stops and starts
// it.
func mariadbDSN(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(testdb.MySQLURL())
	require.NoError(t, err)
	switch u.Hostname() {
	case "127.0.0.1", "localhost", "::1":
	default:
		t.Fatalf("TestMariaDBRestart stops and starts MariaDB on this machine, so TEST_MYSQL_URL must point at it, not %q", u.Hostname())
	}
	cfg, err := gomysql.ParseDSN(testdb.MySQLDSN(t, ""))
	require.NoError(t, err)
	cfg.Timeout = 2 * time.Second
	return cfg.FormatDSN()
}

// mariadbUp reports whether the MariaDB server at dsn answers a ping.
func mariadbUp(dsn string) bool {
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return false
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return db.PingContext(ctx) == nil
}

// stopMariaDB shuts the server at dsn down with the SHUTDOWN statement and
// waits until its process (the one of its pid file) is gone.
func stopMariaDB(dsn string) error {
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var pidFile string
	if err := db.QueryRowContext(ctx, "SELECT @@pid_file").Scan(&pidFile); err != nil {
		return fmt.Errorf("read @@pid_file: %w", err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return err
	}
	pid := strings.TrimSpace(string(b))
	// The server may close the connection before it answers.
	_, _ = db.ExecContext(ctx, "SHUTDOWN")
	for range 1200 {
		if _, err := os.Stat("/proc/" + pid); os.IsNotExist(err) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("mariadbd (pid %s) still runs 60s after SHUTDOWN", pid)
}

// startMariaDB starts the local server: with its init script when that
// works here (mariadbInitCreds exists), else by starting mariadbd, detached,
// which reads /etc/mysql/my.cnf (user, pid file, socket, error log) as the
// init script's mysqld_safe would.
func startMariaDB() error {
	if _, err := os.Stat(mariadbInitCreds); err == nil {
		out, err := run(2*time.Minute, mariadbInit, "start")
		if err != nil {
			return fmt.Errorf("%s start: %w: %s", mariadbInit, err, out)
		}
		return nil
	}
	cmd := exec.Command(mariadbServer)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", mariadbServer, err)
	}
	return cmd.Process.Release()
}

// restartMariaDB stops the local MariaDB, starts it again and waits until
// it answers.
func restartMariaDB(t *testing.T, dsn string) {
	t.Helper()
	require.NoError(t, stopMariaDB(dsn), "stop MariaDB")
	require.NoError(t, startMariaDB(), "start MariaDB")
	eventually(t, 60*time.Second, 100*time.Millisecond, func() (bool, string) {
		return mariadbUp(dsn), "MariaDB not answering"
	}, "MariaDB did not come back after restart")
}

// ensureMariaDB starts the local MariaDB if it does not answer. The test
// that restarts it calls it from t.Cleanup, so a failing test never leaves
// it down.
func ensureMariaDB(t *testing.T, dsn string) {
	if mariadbUp(dsn) {
		return
	}
	if err := startMariaDB(); err != nil {
		t.Errorf("MariaDB is down and could not be started (%v); start it by hand (%s start, or %s as root)", err, mariadbInit, mariadbServer)
		return
	}
	for range 300 {
		if mariadbUp(dsn) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("MariaDB does not answer 30s after start; check /var/log/mysql/error.log")
}
