package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	neturl "net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/glebarez/sqlite"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/cmd/txoutbox/internal/cli"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

const (
	outboxTable = "txoutbox_outbox"
	inboxTable  = "txoutbox_inbox"
)

// result is one in-process run of the command line.
type result struct {
	code           int
	stdout, stderr string
}

// run runs the command line with args and env as the environment.
func run(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := cli.Main(ctx, args, &stdout, &stderr, func(k string) string { return env[k] })
	return result{code, stdout.String(), stderr.String()}
}

// ok runs args against the database at url and requires success.
func ok(t *testing.T, url string, args ...string) string {
	t.Helper()
	r := run(t, nil, append([]string{"--database-url", url}, args...)...)
	require.Equal(t, cli.ExitOK, r.code, "txoutbox %s\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.stdout, r.stderr)
	return r.stdout
}

// okJSON runs args with --json and decodes the output into v.
func okJSON(t *testing.T, url string, v any, args ...string) {
	t.Helper()
	out := ok(t, url, append(args, "--json")...)
	require.NoError(t, json.Unmarshal([]byte(out), v), "output: %s", out)
}

// runJSON runs args with --json against the database at url, requires
// exit code want, decodes stdout into v and returns stderr.
func runJSON(t *testing.T, url string, want int, v any, args ...string) string {
	t.Helper()
	r := run(t, nil, append(append([]string{"--database-url", url}, args...), "--json")...)
	require.Equal(t, want, r.code, "txoutbox %s\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.stdout, r.stderr)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), v), "output: %s", r.stdout)
	return r.stderr
}

// changeJSON is the output of failed retry and failed discard with --json.
type changeJSON struct {
	Table     string  `json:"table"`
	All       bool    `json:"all"`
	Topic     string  `json:"topic"`
	Requested int64   `json:"requested"`
	Requeued  *int64  `json:"requeued"`
	Discarded *int64  `json:"discarded"`
	Unmatched []int64 `json:"unmatched"`
}

// keys returns the keys of a JSON object, sorted.
func keys(t *testing.T, doc string) []string {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(doc), &m), doc)
	return slices.Sorted(maps.Keys(m))
}

// pgDB returns a fresh PostgreSQL schema and the URL the CLI reaches it by.
func pgDB(t *testing.T) (*gorm.DB, string) {
	t.Helper()
	db, schema := testdb.OpenPostgres(t)
	return db, testdb.SchemaURL(t, schema)
}

// mysqlDB returns a fresh MySQL/MariaDB database and the URL the CLI
// reaches it by.
func mysqlDB(t *testing.T) (*gorm.DB, string) {
	t.Helper()
	db, name := testdb.OpenMySQL(t)
	u, err := neturl.Parse(testdb.MySQLURL())
	require.NoError(t, err)
	u.Path = "/" + name
	return db, u.String()
}

// openDB returns a fresh database of dialect d and the URL the CLI
// reaches it by; a SQLite file is migrated already.
func openDB(t *testing.T, d testdb.Dialect) (*gorm.DB, string) {
	t.Helper()
	switch d {
	case testdb.Postgres:
		return pgDB(t)
	case testdb.MySQL:
		return mysqlDB(t)
	}
	return sqliteDB(t)
}

// servers are the database servers every outbox command is tested on.
var servers = []testdb.Dialect{testdb.Postgres, testdb.MySQL}

// eachServer runs f as a parallel subtest on a fresh database of each of
// servers.
func eachServer(t *testing.T, f func(t *testing.T, db *gorm.DB, url string)) {
	t.Helper()
	for _, d := range servers {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			db, url := openDB(t, d)
			f(t, db, url)
		})
	}
}

// nowSQL is the database's current time in SQL, comparable with the
// outbox table's times.
func nowSQL(db *gorm.DB) string {
	if db.Dialector.Name() == "mysql" {
		return "UTC_TIMESTAMP(6)"
	}
	return "now()"
}

// sqliteDB returns a SQLite file and its path, given to the CLI as is.
func sqliteDB(t *testing.T) (*gorm.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "app.db")
	r := run(t, nil, "migrate", "--database-url", path)
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	db, err := gorm.Open(sqlite.Open(testdb.SQLiteDSN(path)), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	sqlDB, err := db.DB()
	require.NoError(t, err)
	t.Cleanup(func() { _ = sqlDB.Close() })
	return db, path
}

// silentServer listens on a local port, accepts connections and never
// answers; it returns the address.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}

// row describes seeded outbox rows.
type row struct {
	prefix, topic, state string // state: pending, parked, delivered
	n                    int
	age                  time.Duration
}

// seed inserts outbox rows "<prefix>-<i>" with created_at (and
// delivered_at or failed_at) set age ago in SQL; parked rows have 10
// attempts and a last error.
func seed(t *testing.T, db *gorm.DB, rows ...row) {
	t.Helper()
	for _, r := range rows {
		delivered, failed, attempts, lastErr := "NULL", "NULL", 0, ""
		switch r.state {
		case "delivered":
			delivered = "ts"
		case "parked":
			failed, attempts, lastErr = "ts", 10, "publish to "+r.topic+": broker said no\n(after 10 attempts)"
		}
		cols := `(uuid, topic, partition_key, payload, created_at, next_attempt_at, attempts, last_error, delivered_at, failed_at)`
		if db.Dialector.Name() == "mysql" {
			ts := time.Now().UTC().Add(-r.age).Format("2006-01-02 15:04:05.000000")
			var deliveredAt, failedAt, lastError any
			switch r.state {
			case "delivered":
				deliveredAt = ts
			case "parked":
				failedAt, lastError = ts, lastErr
			}
			for g := 1; g <= r.n; g++ {
				// metadata has no default on MySQL: JSON columns take none.
				require.NoError(t, db.Exec(`INSERT INTO `+outboxTable+` (metadata, `+cols[1:]+` VALUES ('{}', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
					fmt.Sprintf("%s-%d", r.prefix, g), r.topic, fmt.Sprintf("key-%d", g), []byte{0}, ts, ts, attempts, lastError, deliveredAt, failedAt).Error)
			}
			continue
		}
		if db.Dialector.Name() == "postgres" {
			require.NoError(t, db.Exec(`INSERT INTO `+outboxTable+` `+cols+`
SELECT ? || '-' || g, ?, 'key-' || g, '\x00', ts, ts, ?, nullif(?, ''), `+delivered+`, `+failed+`
FROM generate_series(1, ?) AS g, LATERAL (SELECT now() - ?::bigint * interval '1 microsecond' AS ts) AS t ORDER BY g`,
				r.prefix, r.topic, attempts, lastErr, r.n, r.age.Microseconds()).Error)
			continue
		}
		require.NoError(t, db.Exec(`WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < ?)
INSERT INTO `+outboxTable+` `+cols+`
SELECT ? || '-' || g, ?, 'key-' || g, x'00', ts, ts, ?, nullif(?, ''), `+delivered+`, `+failed+`
FROM s, (SELECT ? AS ts) ORDER BY g`,
			r.n, r.prefix, r.topic, attempts, lastErr, time.Now().UTC().Add(-r.age).Format("2006-01-02 15:04:05.000000+00:00")).Error)
	}
}

// seedInbox inserts n inbox rows for consumer, received age ago.
func seedInbox(t *testing.T, db *gorm.DB, consumer string, n int, age time.Duration) {
	t.Helper()
	if db.Dialector.Name() == "mysql" {
		ts := time.Now().UTC().Add(-age).Format("2006-01-02 15:04:05.000000")
		for g := 1; g <= n; g++ {
			require.NoError(t, db.Exec(`INSERT INTO `+inboxTable+` (consumer, message_uuid, received_at) VALUES (?, ?, ?)`,
				consumer, fmt.Sprintf("m-%d", g), ts).Error)
		}
		return
	}
	if db.Dialector.Name() == "postgres" {
		require.NoError(t, db.Exec(`INSERT INTO `+inboxTable+` (consumer, message_uuid, received_at)
SELECT ?, 'm-' || g, now() - ?::bigint * interval '1 microsecond' FROM generate_series(1, ?) AS g`, consumer, age.Microseconds(), n).Error)
		return
	}
	require.NoError(t, db.Exec(`WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < ?)
INSERT INTO `+inboxTable+` (consumer, message_uuid, received_at) SELECT ?, 'm-' || g, ? FROM s`,
		n, consumer, time.Now().UTC().Add(-age).Format("2006-01-02T15:04:05.000000000Z")).Error)
}

// ids returns the IDs of the rows whose uuid is in uuids, in that order.
func ids(t *testing.T, db *gorm.DB, uuids ...string) []string {
	t.Helper()
	out := make([]string, len(uuids))
	for i, u := range uuids {
		var id int64
		require.NoError(t, db.Raw(`SELECT id FROM `+outboxTable+` WHERE uuid = ?`, u).Scan(&id).Error)
		require.NotZero(t, id, u)
		out[i] = jsonNumber(id)
	}
	return out
}

func jsonNumber(n int64) string { b, _ := json.Marshal(n); return string(b) }

type statusJSON struct {
	Table                   string  `json:"table"`
	Pending                 int64   `json:"pending"`
	Failed                  int64   `json:"failed"`
	OldestPendingAge        string  `json:"oldest_pending_age"`
	OldestPendingAgeSeconds float64 `json:"oldest_pending_age_seconds"`
	Topics                  []struct {
		Topic                   string  `json:"topic"`
		Pending                 int64   `json:"pending"`
		Failed                  int64   `json:"failed"`
		OldestPendingAgeSeconds float64 `json:"oldest_pending_age_seconds"`
	} `json:"topics"`
}

type failedJSON struct {
	Table  string `json:"table"`
	Failed []struct {
		ID           int64     `json:"id"`
		UUID         string    `json:"uuid"`
		Topic        string    `json:"topic"`
		PartitionKey string    `json:"partition_key"`
		Attempts     int       `json:"attempts"`
		FailedAt     time.Time `json:"failed_at"`
		LastError    string    `json:"last_error"`
	} `json:"failed"`
	NextAfter int64 `json:"next_after"`
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	db, url := pgDB(t)
	var out struct {
		OutboxTable string `json:"outbox_table"`
		InboxTable  string `json:"inbox_table"`
	}
	okJSON(t, url, &out, "migrate", "outbox")
	require.Equal(t, outboxTable, out.OutboxTable)
	require.Empty(t, out.InboxTable)
	require.True(t, db.Migrator().HasTable(outboxTable))
	require.False(t, db.Migrator().HasTable(inboxTable), "migrate outbox leaves the inbox alone")

	human := ok(t, url, "migrate")
	require.Equal(t, "migrated outbox table txoutbox_outbox\nmigrated inbox table txoutbox_inbox\n", human)
	require.True(t, db.Migrator().HasTable(inboxTable))
	require.True(t, db.Migrator().HasTable(inboxTable+"_failed"), "migrate inbox creates the failed table too")
	ok(t, url, "migrate") // idempotent

	// Custom, schema-qualified tables.
	ok(t, url, "migrate", "--table", "ops.events", "--inbox-table", "ops.seen")
	var n int64
	require.NoError(t, db.Raw(`SELECT count(*) FROM pg_tables WHERE schemaname = 'ops' AND tablename IN ('events', 'seen', 'seen_failed')`).Scan(&n).Error)
	require.NoError(t, db.Exec(`DROP SCHEMA ops CASCADE`).Error)
	require.EqualValues(t, 3, n)
}

// TestMigrateMySQL creates the tables on MySQL/MariaDB, again without
// harm, and under other names.
func TestMigrateMySQL(t *testing.T) {
	t.Parallel()
	db, url := mysqlDB(t)
	r := run(t, nil, "--database-url", url, "failed", "list")
	require.Equal(t, cli.ExitFailure, r.code, r.stderr)
	require.Contains(t, r.stderr, "run txoutbox migrate first", "a missing table is named with what to do")

	require.Equal(t, "migrated outbox table txoutbox_outbox\n", ok(t, url, "migrate", "outbox"))
	require.True(t, db.Migrator().HasTable(outboxTable))
	require.False(t, db.Migrator().HasTable(inboxTable), "migrate outbox leaves the inbox alone")

	require.Equal(t, "migrated outbox table txoutbox_outbox\nmigrated inbox table txoutbox_inbox\n", ok(t, url, "migrate"))
	require.True(t, db.Migrator().HasTable(inboxTable))
	require.True(t, db.Migrator().HasTable(inboxTable+"_failed"), "migrate inbox creates the failed table too")
	ok(t, url, "migrate") // idempotent

	ok(t, url, "migrate", "--table", "events", "--inbox-table", "seen")
	for _, table := range []string{"events", "seen", "seen_failed"} {
		require.True(t, db.Migrator().HasTable(table), table)
	}
	require.Equal(t, "outbox events: 0 pending, 0 failed, oldest pending -\n", ok(t, url, "status", "--table", "events", "--inbox-table", "seen"))

	// A database-qualified name.
	u, err := neturl.Parse(url)
	require.NoError(t, err)
	qualified := strings.TrimPrefix(u.Path, "/") + ".qualified"
	require.Equal(t, "migrated outbox table "+qualified+"\n", ok(t, url, "migrate", "outbox", "--table", qualified))
	require.True(t, db.Migrator().HasTable("qualified"))
}

func TestStatus(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, db *gorm.DB, url string) {
		ok(t, url, "migrate")
		out := ok(t, url, "status")
		require.Equal(t, "outbox txoutbox_outbox: 0 pending, 0 failed, oldest pending -\n", out)

		seed(t, db,
			row{"orders-p", "orders", "pending", 3, 10 * time.Minute},
			row{"orders-f", "orders", "parked", 2, time.Hour},
			row{"payments-p", "payments", "pending", 1, 2 * time.Minute},
			row{"mail-f", "mail", "parked", 1, time.Hour},
			row{"delivered", "orders", "delivered", 5, time.Hour},
		)
		var st statusJSON
		okJSON(t, url, &st, "status")
		require.Equal(t, outboxTable, st.Table)
		require.EqualValues(t, 4, st.Pending)
		require.EqualValues(t, 3, st.Failed)
		require.InDelta(t, 600, st.OldestPendingAgeSeconds, 30)
		require.Len(t, st.Topics, 3)
		require.Equal(t, "mail", st.Topics[0].Topic, "topics sorted by name")
		require.EqualValues(t, 0, st.Topics[0].Pending)
		require.EqualValues(t, 1, st.Topics[0].Failed)
		require.Zero(t, st.Topics[0].OldestPendingAgeSeconds)
		require.Equal(t, "orders", st.Topics[1].Topic)
		require.EqualValues(t, 3, st.Topics[1].Pending)
		require.EqualValues(t, 2, st.Topics[1].Failed)
		require.Equal(t, "payments", st.Topics[2].Topic)
		require.InDelta(t, 120, st.Topics[2].OldestPendingAgeSeconds, 30)

		out = ok(t, url, "status")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		require.Len(t, lines, 6, out)
		require.Regexp(t, `^outbox txoutbox_outbox: 4 pending, 3 failed, oldest pending 10m\d+s$`, lines[0])
		require.Empty(t, lines[1])
		require.Regexp(t, `^TOPIC\s+PENDING\s+FAILED\s+OLDEST PENDING$`, lines[2])
		require.Regexp(t, `^mail\s+0\s+1\s+-$`, lines[3])
		require.Regexp(t, `^orders\s+3\s+2\s+10m\d+s$`, lines[4])
		require.Regexp(t, `^payments\s+1\s+0\s+2m\d+s$`, lines[5])
	})
}

func TestFailedList(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, db *gorm.DB, url string) {
		ok(t, url, "migrate", "outbox")
		out := ok(t, url, "failed", "list")
		require.Equal(t, "no failed events in txoutbox_outbox\n", out)

		seed(t, db,
			row{"a", "orders", "parked", 3, time.Hour},
			row{"p", "orders", "pending", 2, time.Hour},
			row{"b", "mail", "parked", 2, time.Minute},
		)
		var page failedJSON
		okJSON(t, url, &page, "failed", "list", "--limit", "4")
		require.Len(t, page.Failed, 4)
		require.Equal(t, []string{"a-1", "a-2", "a-3", "b-1"}, []string{page.Failed[0].UUID, page.Failed[1].UUID, page.Failed[2].UUID, page.Failed[3].UUID})
		first := page.Failed[0]
		require.Equal(t, "orders", first.Topic)
		require.Equal(t, "key-1", first.PartitionKey)
		require.Equal(t, 10, first.Attempts)
		require.Equal(t, "publish to orders: broker said no\n(after 10 attempts)", first.LastError)
		require.WithinDuration(t, time.Now().Add(-time.Hour), first.FailedAt, time.Minute)
		require.Equal(t, page.Failed[3].ID, page.NextAfter)

		var next failedJSON
		okJSON(t, url, &next, "failed", "list", "--limit", "4", "--after", jsonNumber(page.NextAfter))
		require.Len(t, next.Failed, 1)
		require.Equal(t, "b-2", next.Failed[0].UUID)
		require.Zero(t, next.NextAfter, "last page")

		r := run(t, nil, "failed", "list", "--database-url", url, "--limit", "2")
		require.Equal(t, cli.ExitOK, r.code)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		require.Len(t, lines, 3)
		require.Regexp(t, `^ID\s+TOPIC\s+KEY\s+ATTEMPTS\s+FAILED AT\s+LAST ERROR$`, lines[0])
		require.Regexp(t, `^\d+\s+orders\s+key-1\s+10\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+publish to orders: broker said no \(after 10 attempts\)$`, lines[1])
		require.Contains(t, r.stderr, "txoutbox failed list --after ")
	})
}

func TestFailedRetry(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, db *gorm.DB, url string) {
		ok(t, url, "migrate", "outbox")
		seed(t, db, row{"f", "orders", "parked", 4, time.Hour}, row{"p", "orders", "pending", 1, time.Hour}, row{"m", "mail", "parked", 2, time.Hour})
		id := ids(t, db, "f-1", "f-2", "f-3", "p-1")

		var res changeJSON
		runJSON(t, url, cli.ExitOK, &res, "failed", "retry", id[1], id[0]+","+id[1])
		require.Equal(t, changeJSON{Table: outboxTable, Requested: 2, Requeued: ptr(2), Unmatched: []int64{}}, res)
		pendingAgain := `uuid IN ('f-1', 'f-2') AND failed_at IS NULL AND attempts = 0 AND delivered_at IS NULL AND next_attempt_at <= ` + nowSQL(db)
		require.EqualValues(t, 2, testdb.Count(t, db, outboxTable, pendingAgain), "requeued rows are pending with attempts 0")
		require.EqualValues(t, 4, testdb.Count(t, db, outboxTable, "failed_at IS NOT NULL AND attempts = 10"), "other failed rows untouched")

		// A pending row's ID and a missing ID: the parked one is requeued, the
		// others are named, and the exit code says so.
		r := run(t, nil, "failed", "retry", "--database-url", url, id[2]+","+id[3], "999999")
		require.Equal(t, cli.ExitNotFound, r.code, r.stderr)
		require.Equal(t, "requeued 1 failed events in txoutbox_outbox\n", r.stdout)
		require.Equal(t, "txoutbox: 2 of 3 IDs matched no failed event (wrong ID, or already retried, discarded or delivered): "+
			id[3]+", 999999; requeued the other 1\n", r.stderr)
		require.EqualValues(t, 3, testdb.Count(t, db, outboxTable, "uuid LIKE 'f-%' AND failed_at IS NULL"))

		// Nothing matches: nothing changes, exit code 3, JSON names them all.
		res = changeJSON{}
		stderr := runJSON(t, url, cli.ExitNotFound, &res, "failed", "retry", id[0], id[3])
		require.Equal(t, changeJSON{Table: outboxTable, Requested: 2, Requeued: ptr(0), Unmatched: []int64{mustInt(t, id[0]), mustInt(t, id[3])}}, res)
		require.Contains(t, stderr, "txoutbox: IDs "+id[0]+", "+id[3]+" matched no failed event")
		require.Contains(t, stderr, "nothing was requeued")

		// --topic: that topic's parked rows only.
		res = changeJSON{}
		runJSON(t, url, cli.ExitOK, &res, "failed", "retry", "--topic", "mail")
		require.Equal(t, changeJSON{Table: outboxTable, Topic: "mail", Requeued: ptr(2), Unmatched: []int64{}}, res)
		require.Zero(t, testdb.Count(t, db, outboxTable, "topic = 'mail' AND failed_at IS NOT NULL"))
		require.EqualValues(t, 1, testdb.Count(t, db, outboxTable, "uuid = 'f-4' AND failed_at IS NOT NULL"))
		require.Equal(t, "requeued 0 failed events of topic nope in txoutbox_outbox\n", ok(t, url, "failed", "retry", "--topic", "nope"),
			"a topic without failed events is not an error")

		out := ok(t, url, "failed", "retry", "--all")
		require.Equal(t, "requeued 1 failed events in txoutbox_outbox\n", out)
		require.Zero(t, testdb.Count(t, db, outboxTable, "failed_at IS NOT NULL OR attempts <> 0"))
		require.EqualValues(t, 7, testdb.Count(t, db, outboxTable, ""))
		res = changeJSON{}
		runJSON(t, url, cli.ExitOK, &res, "failed", "retry", "--all")
		require.Equal(t, changeJSON{Table: outboxTable, All: true, Requeued: ptr(0), Unmatched: []int64{}}, res)
	})
}

// The JSON of failed retry and failed discard has the same keys with IDs,
// --all and --topic, also when IDs do not match.
func TestFailedChangeJSONShape(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, db *gorm.DB, url string) {
		ok(t, url, "migrate", "outbox")
		seed(t, db, row{"f", "orders", "parked", 3, time.Hour})
		id := ids(t, db, "f-1")
		for _, verb := range []string{"retry", "discard"} {
			key := map[string]string{"retry": "requeued", "discard": "discarded"}[verb]
			want := []string{"all", key, "requested", "table", "topic", "unmatched"}
			slices.Sort(want)
			for _, args := range [][]string{{id[0]}, {"999999"}, {"--all"}, {"--topic", "orders"}} {
				r := run(t, nil, append([]string{"--database-url", url, "--json", "failed", verb}, args...)...)
				require.Contains(t, []int{cli.ExitOK, cli.ExitNotFound}, r.code, r.stderr)
				require.Equal(t, want, keys(t, r.stdout), "failed %s %v", verb, args)
			}
		}
	})
}

func TestFailedDiscard(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, db *gorm.DB, url string) {
		ok(t, url, "migrate", "outbox")
		seed(t, db, row{"f", "orders", "parked", 3, time.Hour}, row{"p", "orders", "pending", 1, time.Hour},
			row{"m", "mail", "parked", 2, time.Hour}, row{"i", "invoices", "parked", 2, time.Hour})
		id := ids(t, db, "f-1", "f-2", "f-3", "p-1")

		var res changeJSON
		stderr := runJSON(t, url, cli.ExitNotFound, &res, "failed", "discard", id[0], id[2], id[3])
		require.Equal(t, changeJSON{Table: outboxTable, Requested: 3, Discarded: ptr(2), Unmatched: []int64{mustInt(t, id[3])}}, res)
		require.Equal(t, "txoutbox: 1 of 3 IDs matched no failed event (wrong ID, or already retried, discarded or delivered): "+id[3]+"; discarded the other 2\n", stderr)
		require.Zero(t, testdb.Count(t, db, outboxTable, "uuid IN ('f-1', 'f-3')"), "discarded rows are gone")
		require.EqualValues(t, 1, testdb.Count(t, db, outboxTable, "uuid = 'f-2' AND failed_at IS NOT NULL"))
		require.EqualValues(t, 1, testdb.Count(t, db, outboxTable, "uuid = 'p-1'"), "a pending row is never discarded")

		// An ID discarded already: exit code 3, nothing changed.
		r := run(t, nil, "--database-url", url, "failed", "discard", id[0])
		require.Equal(t, cli.ExitNotFound, r.code, r.stderr)
		require.Equal(t, "discarded 0 failed events from txoutbox_outbox\n", r.stdout)
		require.Contains(t, r.stderr, "ID "+id[0]+" matched no failed event")
		require.EqualValues(t, 6, testdb.Count(t, db, outboxTable, ""))

		// --topic deletes that topic's parked rows only.
		require.Equal(t, "discarded 2 failed events of topic mail from txoutbox_outbox\n", ok(t, url, "failed", "discard", "--topic", "mail"))
		require.Zero(t, testdb.Count(t, db, outboxTable, "topic = 'mail'"))
		require.EqualValues(t, 3, testdb.Count(t, db, outboxTable, "failed_at IS NOT NULL"))

		// --all deletes every parked row and no pending one.
		res = changeJSON{}
		runJSON(t, url, cli.ExitOK, &res, "failed", "discard", "--all")
		require.Equal(t, changeJSON{Table: outboxTable, All: true, Discarded: ptr(3), Unmatched: []int64{}}, res)
		require.Zero(t, testdb.Count(t, db, outboxTable, "failed_at IS NOT NULL"))
		require.EqualValues(t, 1, testdb.Count(t, db, outboxTable, ""))
		require.EqualValues(t, 1, testdb.Count(t, db, outboxTable, "uuid = 'p-1'"))
	})
}

// failed show prints one parked row whole; an ID that is not one exits
// with ExitNotFound.
func TestFailedShow(t *testing.T) {
	t.Parallel()
	db, url := pgDB(t)
	ok(t, url, "migrate")
	seed(t, db, row{"f", "orders", "parked", 2, time.Hour}, row{"p", "orders", "pending", 1, time.Hour})
	id := ids(t, db, "f-1", "f-2", "p-1")
	long := "publish to orders: " + strings.Repeat("broker said no; ", 20) + "\nsecond line"
	require.NoError(t, db.Exec(`UPDATE `+outboxTable+` SET last_error = ?, metadata = ?, payload = ? WHERE uuid = 'f-1'`,
		long, `{"partition_key": "key-1", "trace": "t-1"}`, []byte(`{"order_id":"o-17"}`)).Error)
	require.NoError(t, db.Exec(`UPDATE `+outboxTable+` SET metadata = '{"n": 1}', payload = '\xff00' WHERE uuid = 'f-2'`).Error)

	var res struct {
		Table           string            `json:"table"`
		ID              int64             `json:"id"`
		UUID            string            `json:"uuid"`
		Topic           string            `json:"topic"`
		PartitionKey    string            `json:"partition_key"`
		Attempts        int               `json:"attempts"`
		CreatedAt       time.Time         `json:"created_at"`
		FailedAt        time.Time         `json:"failed_at"`
		LastError       string            `json:"last_error"`
		Metadata        map[string]string `json:"metadata"`
		MetadataRaw     string            `json:"metadata_raw"`
		PayloadSize     int               `json:"payload_size"`
		PayloadEncoding string            `json:"payload_encoding"`
		Payload         string            `json:"payload"`
	}
	okJSON(t, url, &res, "failed", "show", id[0])
	require.Equal(t, outboxTable, res.Table)
	require.Equal(t, mustInt(t, id[0]), res.ID)
	require.Equal(t, "f-1", res.UUID)
	require.Equal(t, "orders", res.Topic)
	require.Equal(t, "key-1", res.PartitionKey)
	require.Equal(t, 10, res.Attempts)
	require.WithinDuration(t, time.Now().Add(-time.Hour), res.CreatedAt, time.Minute)
	require.WithinDuration(t, time.Now().Add(-time.Hour), res.FailedAt, time.Minute)
	require.Equal(t, long, res.LastError, "the whole error")
	require.Equal(t, map[string]string{"partition_key": "key-1", "trace": "t-1"}, res.Metadata)
	require.Empty(t, res.MetadataRaw)
	require.Equal(t, 19, res.PayloadSize)
	require.Equal(t, "utf-8", res.PayloadEncoding)
	require.Equal(t, `{"order_id":"o-17"}`, res.Payload)

	out := ok(t, url, "failed", "show", id[0])
	require.Contains(t, out, "uuid:           f-1\n")
	require.Contains(t, out, "partition key:  key-1\n")
	require.Contains(t, out, "metadata:       partition_key=\"key-1\" trace=\"t-1\"\n")
	require.Contains(t, out, "payload:        19 bytes (--payload prints it)\n")
	require.Contains(t, out, "last error:\n  publish to orders: "+strings.Repeat("broker said no; ", 20)+"\n  second line\n", "the whole error, every line")
	require.NotContains(t, out, "o-17", "the payload only with --payload")
	out = ok(t, url, "failed", "show", id[0], "--payload")
	require.True(t, strings.HasSuffix(out, "payload:\n  {\"order_id\":\"o-17\"}\n"), out)

	// A payload that is not text comes in base64; metadata that is not
	// an object of strings comes raw.
	res.Metadata = nil
	okJSON(t, url, &res, "failed", "show", id[1])
	require.Equal(t, "base64", res.PayloadEncoding)
	require.Equal(t, "/wA=", res.Payload)
	require.Equal(t, 2, res.PayloadSize)
	require.Nil(t, res.Metadata)
	require.JSONEq(t, `{"n": 1}`, res.MetadataRaw)

	for _, missing := range []string{id[2], "999999"} {
		r := run(t, nil, "--database-url", url, "failed", "show", missing)
		require.Equal(t, cli.ExitNotFound, r.code, r.stderr)
		require.Empty(t, r.stdout)
		require.Equal(t, "txoutbox: no failed event with ID "+missing+" in txoutbox_outbox (wrong ID, or already retried, discarded or delivered)\n", r.stderr)
	}
}

// TestPurgeDryRun counts what purge would delete and deletes nothing.
func TestPurgeDryRun(t *testing.T) {
	t.Parallel()
	for _, d := range append(slices.Clone(servers), testdb.SQLite) {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			db, url := openDB(t, d)
			ok(t, url, "migrate")
			seed(t, db,
				row{"old", "orders", "delivered", 5, 48 * time.Hour},
				row{"young", "orders", "delivered", 2, time.Hour},
				row{"parked", "orders", "parked", 2, 72 * time.Hour},
			)
			seedInbox(t, db, "old", 3, 40*24*time.Hour)
			seedInbox(t, db, "young", 1, time.Hour)

			out := ok(t, url, "purge", "--delivered-before", "1d", "--inbox-older-than", "30d", "--dry-run")
			require.Equal(t, "dry run: would delete 5 delivered rows from txoutbox_outbox (delivered more than 24h0m0s ago)\n"+
				"dry run: would delete 3 inbox rows from txoutbox_inbox (received more than 720h0m0s ago)\n", out)
			var res struct {
				DryRun bool `json:"dry_run"`
				Outbox struct {
					Table   string `json:"table"`
					Deleted int64  `json:"deleted"`
				} `json:"outbox"`
				Inbox struct {
					Deleted int64 `json:"deleted"`
				} `json:"inbox"`
			}
			okJSON(t, url, &res, "purge", "--delivered-before", "0", "--inbox-older-than", "1m", "--dry-run")
			require.True(t, res.DryRun)
			require.EqualValues(t, 7, res.Outbox.Deleted)
			require.EqualValues(t, 4, res.Inbox.Deleted)
			require.EqualValues(t, 9, testdb.Count(t, db, outboxTable, ""), "a dry run deletes nothing")
			require.EqualValues(t, 4, testdb.Count(t, db, inboxTable, ""), "a dry run deletes nothing")

			// The real run deletes what the dry run counted.
			okJSON(t, url, &res, "purge", "--delivered-before", "1d", "--inbox-older-than", "30d")
			require.False(t, res.DryRun)
			require.EqualValues(t, 5, res.Outbox.Deleted)
			require.EqualValues(t, 3, res.Inbox.Deleted)
			require.EqualValues(t, 4, testdb.Count(t, db, outboxTable, ""))
			require.EqualValues(t, 1, testdb.Count(t, db, inboxTable, ""))
		})
	}
}

func ptr(n int64) *int64 { return &n }

func mustInt(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	require.NoError(t, err)
	return n
}

func TestPurge(t *testing.T) {
	t.Parallel()
	db, url := pgDB(t)
	ok(t, url, "migrate")
	seed(t, db,
		row{"old", "orders", "delivered", 25, 48 * time.Hour},
		row{"young", "orders", "delivered", 3, time.Hour},
		row{"pending", "orders", "pending", 2, 72 * time.Hour},
		row{"parked", "orders", "parked", 2, 72 * time.Hour},
	)
	seedInbox(t, db, "old", 7, 40*24*time.Hour)
	seedInbox(t, db, "young", 2, 24*time.Hour)

	out := ok(t, url, "purge", "--delivered-before", "1d", "--batch-size", "10")
	require.Equal(t, "deleted 25 delivered rows from txoutbox_outbox (delivered more than 24h0m0s ago)\n", out)
	require.Zero(t, testdb.Count(t, db, outboxTable, "uuid LIKE 'old-%'"))
	require.EqualValues(t, 3, testdb.Count(t, db, outboxTable, "uuid LIKE 'young-%'"))
	require.EqualValues(t, 4, testdb.Count(t, db, outboxTable, "delivered_at IS NULL"), "pending and parked rows stay")
	require.EqualValues(t, 9, testdb.Count(t, db, inboxTable, ""), "the inbox is purged only when asked")

	var res struct {
		Outbox struct {
			Table     string `json:"table"`
			OlderThan string `json:"older_than"`
			Deleted   int64  `json:"deleted"`
		} `json:"outbox"`
		Inbox struct {
			Table   string `json:"table"`
			Deleted int64  `json:"deleted"`
		} `json:"inbox"`
	}
	okJSON(t, url, &res, "purge", "--delivered-before", "30m", "--inbox-older-than", "30d")
	require.EqualValues(t, 3, res.Outbox.Deleted)
	require.Equal(t, "30m0s", res.Outbox.OlderThan)
	require.Equal(t, inboxTable, res.Inbox.Table)
	require.EqualValues(t, 7, res.Inbox.Deleted)
	require.EqualValues(t, 2, testdb.Count(t, db, inboxTable, "consumer = 'young'"))
	require.EqualValues(t, 4, testdb.Count(t, db, outboxTable, ""))
}

// TestSQLite runs the commands on a SQLite file.
func TestSQLite(t *testing.T) {
	t.Parallel()
	db, path := sqliteDB(t)
	seed(t, db,
		row{"f", "orders", "parked", 3, time.Hour},
		row{"p", "orders", "pending", 2, 5 * time.Minute},
		row{"old", "orders", "delivered", 4, 48 * time.Hour},
		row{"young", "orders", "delivered", 1, time.Minute},
	)
	seedInbox(t, db, "old", 3, 40*24*time.Hour)
	seedInbox(t, db, "young", 1, time.Hour)

	var st statusJSON
	okJSON(t, path, &st, "status")
	require.EqualValues(t, 2, st.Pending)
	require.EqualValues(t, 3, st.Failed)
	require.InDelta(t, 300, st.OldestPendingAgeSeconds, 30)

	var page failedJSON
	okJSON(t, "file:"+path, &page, "failed", "list")
	require.Len(t, page.Failed, 3)
	require.Equal(t, 10, page.Failed[0].Attempts)
	require.WithinDuration(t, time.Now().Add(-time.Hour), page.Failed[0].FailedAt, time.Minute)

	ok(t, "sqlite://"+path, "failed", "retry", jsonNumber(page.Failed[0].ID))
	require.EqualValues(t, 1, testdb.Count(t, db, outboxTable, "uuid = 'f-1' AND failed_at IS NULL AND attempts = 0"))
	ok(t, path, "failed", "discard", jsonNumber(page.Failed[1].ID))
	require.Zero(t, testdb.Count(t, db, outboxTable, "uuid = 'f-2'"))

	// show, --topic and --all on SQLite.
	require.NoError(t, db.Exec(`UPDATE `+outboxTable+` SET topic = 'mail' WHERE uuid = 'f-3'`).Error)
	var shown struct {
		UUID      string            `json:"uuid"`
		LastError string            `json:"last_error"`
		Metadata  map[string]string `json:"metadata"`
		Payload   string            `json:"payload"`
	}
	okJSON(t, path, &shown, "failed", "show", jsonNumber(page.Failed[2].ID))
	require.Equal(t, "f-3", shown.UUID)
	require.Equal(t, "publish to orders: broker said no\n(after 10 attempts)", shown.LastError)
	require.Equal(t, map[string]string{}, shown.Metadata)
	require.Equal(t, "\x00", shown.Payload)
	r := run(t, nil, "--database-url", path, "failed", "show", jsonNumber(page.Failed[1].ID))
	require.Equal(t, cli.ExitNotFound, r.code, "a discarded row: %s", r.stderr)
	seed(t, db, row{"g", "orders", "parked", 2, time.Hour})
	require.Equal(t, "requeued 1 failed events of topic mail in txoutbox_outbox\n", ok(t, path, "failed", "retry", "--topic", "mail"))
	require.EqualValues(t, 1, testdb.Count(t, db, outboxTable, "uuid = 'f-3' AND failed_at IS NULL"))
	require.Equal(t, "discarded 2 failed events from txoutbox_outbox\n", ok(t, path, "failed", "discard", "--all"))
	require.Zero(t, testdb.Count(t, db, outboxTable, "failed_at IS NOT NULL"))
	r = run(t, nil, "--database-url", path, "failed", "retry", jsonNumber(page.Failed[0].ID), "999999")
	require.Equal(t, cli.ExitNotFound, r.code, r.stderr)
	require.Contains(t, r.stderr, "IDs "+jsonNumber(page.Failed[0].ID)+", 999999 matched no failed event")

	out := ok(t, path, "purge", "--delivered-before", "24h", "--inbox-older-than", "7d")
	require.Equal(t, "deleted 4 delivered rows from txoutbox_outbox (delivered more than 24h0m0s ago)\n"+
		"deleted 3 inbox rows from txoutbox_inbox (received more than 168h0m0s ago)\n", out)
	require.EqualValues(t, 1, testdb.Count(t, db, outboxTable, "delivered_at IS NOT NULL"))
	require.EqualValues(t, 1, testdb.Count(t, db, inboxTable, ""))
}

// TestDatabaseURLFromEnv reads DATABASE_URL when --database-url is not
// given, and the flag wins over it.
func TestDatabaseURLFromEnv(t *testing.T) {
	t.Parallel()
	_, path := sqliteDB(t)
	r := run(t, map[string]string{"DATABASE_URL": path}, "status")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "0 pending")

	r = run(t, map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/x"}, "status", "--database-url", path)
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	_, path := sqliteDB(t)
	cases := []struct {
		args []string
		want string
	}{
		{nil, "missing command"},
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"stats"}, "Did you mean this?"},
		{[]string{"status", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"status", "extra"}, `unknown command "extra"`},
		{[]string{"failed"}, "missing command"},
		{[]string{"failed", "nope"}, `unknown command "nope"`},
		{[]string{"failed", "list", "--limit", "0"}, "--limit 0 is out of range"},
		{[]string{"failed", "list", "--limit", "x"}, `invalid argument "x" for "--limit"`},
		{[]string{"failed", "list", "--after", "-1"}, "--after -1 must not be negative"},
		{[]string{"failed", "retry"}, "give row IDs, --all or --topic TOPIC: one of them"},
		{[]string{"failed", "retry", "1", "--all"}, "give row IDs, --all or --topic TOPIC: one of them"},
		{[]string{"failed", "retry", "1", "--topic", "orders"}, "give row IDs, --all or --topic TOPIC: one of them"},
		{[]string{"failed", "retry", "--topic", ""}, "--topic needs a topic name"},
		{[]string{"failed", "retry", "abc"}, `invalid row ID "abc"`},
		{[]string{"failed", "discard"}, "give row IDs, --all or --topic TOPIC: one of them"},
		{[]string{"failed", "discard", "--all", "--topic", "orders"}, "give row IDs, --all or --topic TOPIC: one of them"},
		{[]string{"failed", "discard", "0"}, `invalid row ID "0"`},
		{[]string{"failed", "discard", ","}, "no row IDs given"},
		{[]string{"failed", "retry", ","}, "no row IDs given"},
		{[]string{"failed", "show"}, "accepts 1 arg(s), received 0"},
		{[]string{"failed", "show", "1", "2"}, "accepts 1 arg(s), received 2"},
		{[]string{"failed", "show", "x"}, `invalid row ID "x"`},
		{[]string{"inbox", "failed", "show", "-3"}, "unknown shorthand flag"},
		{[]string{"inbox", "failed", "show", "0"}, `invalid row ID "0"`},
		{[]string{"version", "x"}, `unknown command "x"`},
		{[]string{"purge"}, "nothing to purge"},
		{[]string{"purge", "--delivered-before", "soon"}, `invalid duration "soon"`},
		{[]string{"purge", "--delivered-before", "-1h"}, `invalid duration "-1h"`},
		{[]string{"purge", "--inbox-older-than", "0s"}, "--inbox-older-than 0s must be positive"},
		{[]string{"purge", "--delivered-before", "1h", "--batch-size", "0"}, "--batch-size 0 is out of range"},
		{[]string{"migrate", "outbox", "table"}, `invalid argument "table"`},
		{[]string{"status", "--table", "bad name"}, `"bad name" is not a plain SQL identifier`},
		{[]string{"migrate", "--inbox-table", "a.b.c"}, "use name or schema.name"},
		{[]string{"status", "--connect-timeout", "0s"}, "--connect-timeout 0s must be positive"},
	}
	for _, c := range cases {
		args := append([]string{"--database-url", path}, c.args...)
		r := run(t, nil, args...)
		require.Equal(t, cli.ExitUsage, r.code, "args %q\nstderr: %s", c.args, r.stderr)
		require.Contains(t, r.stderr, c.want, "args %q", c.args)
		require.Contains(t, r.stderr, "--help' for usage.", "args %q", c.args)
	}

	urls := []struct{ url, want string }{
		{"", "no database: set --database-url or DATABASE_URL"},
		{"mssql://root@db/app", `unsupported scheme "mssql" (use postgres://, mysql://`},
		{"mysql://root:secret@db", "no database (use mysql://user@host:3306/db)"},
		{"mysql://root:secret@db/app?parseTime=false", "parseTime is always true"},
		{"postgres:///nohost", "no host"},
		{"postgres://user:secret@db:5432/%zz", `invalid database URL "postgres://xxxxx@db:5432/%zz"`},
		{"sqlite://", "no file (use sqlite:///path/file.db, or the path alone)"},
		{":memory:", "in-memory SQLite database"},
		{"db:5432/app", "looks like a host and port"},
		{"file:", "file: needs a path"},
	}
	for _, u := range urls {
		r := run(t, nil, "status", "--database-url", u.url)
		require.Equal(t, cli.ExitUsage, r.code, "url %q\nstderr: %s", u.url, r.stderr)
		require.Contains(t, r.stderr, u.want, "url %q", u.url)
		require.NotContains(t, r.stderr, "secret")
	}

	// Help is not an error.
	r := run(t, nil, "failed", "retry", "--help")
	require.Equal(t, cli.ExitOK, r.code)
	require.Contains(t, r.stdout, "txoutbox failed retry --all")
}

// --version and version print the build's version without a database.
func TestVersion(t *testing.T) {
	t.Parallel()
	r := run(t, nil, "--version")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	require.Regexp(t, `^txoutbox \S+( \(revision [0-9a-f]+(, modified)?\))? go1\.\d+\S*\n$`, r.stdout)
	r2 := run(t, nil, "version")
	require.Equal(t, cli.ExitOK, r2.code, r2.stderr)
	require.Equal(t, r.stdout, r2.stdout, "the same line")

	r = run(t, nil, "version", "--json")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	var v struct {
		Version string `json:"version"`
		Go      string `json:"go"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &v), r.stdout)
	require.NotEmpty(t, v.Version)
	require.Regexp(t, `^go1\.`, v.Go)
	require.Contains(t, r2.stdout, v.Version)
}

// TestRuntimeErrors: an unreachable database, a missing SQLite file and a
// missing table exit with ExitFailure and say what to do.
func TestRuntimeErrors(t *testing.T) {
	t.Parallel()
	start := time.Now()
	r := run(t, nil, "status", "--database-url", "postgres://postgres:secret@127.0.0.1:1/x")
	require.Equal(t, cli.ExitFailure, r.code, r.stderr)
	require.Contains(t, r.stderr, "txoutbox: cannot reach database postgres://postgres:xxxxx@127.0.0.1:1/x")
	require.NotContains(t, r.stderr, "secret")
	require.Less(t, time.Since(start), 10*time.Second)

	missing := filepath.Join(t.TempDir(), "missing.db")
	r = run(t, nil, "failed", "list", "--database-url", missing)
	require.Equal(t, cli.ExitFailure, r.code, r.stderr)
	require.Contains(t, r.stderr, "run txoutbox migrate to create it")
	require.NoFileExists(t, missing, "only migrate creates a SQLite file")

	_, url := pgDB(t)
	for _, args := range [][]string{{"status"}, {"failed", "list"}, {"purge", "--delivered-before", "1h"}} {
		r = run(t, nil, append([]string{"--database-url", url}, args...)...)
		require.Equal(t, cli.ExitFailure, r.code, "%q: %s", args, r.stderr)
		require.Contains(t, r.stderr, "does not exist")
		require.Contains(t, r.stderr, "(wrong --table or --database-url, or run txoutbox migrate first)", "%q", args)
	}
}

// TestConnectTimeout: a server that accepts connections but never answers
// is given up on after --connect-timeout.
func TestConnectTimeout(t *testing.T) {
	t.Parallel()
	addr := silentServer(t)
	start := time.Now()
	r := run(t, nil, "status", "--connect-timeout", "1s", "--database-url", "postgres://postgres@"+addr+"/x?sslmode=disable")
	require.Equal(t, cli.ExitFailure, r.code, r.stderr)
	require.Contains(t, r.stderr, "cannot reach database")
	require.Less(t, time.Since(start), 8*time.Second, "the connect timeout bounds the wait")

	// A MySQL server that accepts the connection and never greets.
	start = time.Now()
	r = run(t, nil, "status", "--connect-timeout", "1s", "--database-url", "mysql://root@"+addr+"/x")
	require.Equal(t, cli.ExitFailure, r.code, r.stderr)
	require.Contains(t, r.stderr, "cannot reach database mysql://root@"+addr+"/x")
	require.Less(t, time.Since(start), 8*time.Second, "the connect timeout bounds the wait")
}
