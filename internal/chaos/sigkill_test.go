//go:build chaos

package chaos_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	_ "github.com/go-sql-driver/mysql" // database/sql driver "mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/stretchr/testify/require"
	bamqp "github.com/txoutbox/txoutbox/brokers/amqp"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// The subprocess of TestSIGKILLForwarder is this test binary started with
// childEnv=forwarder and childDSNEnv set to the test schema's URL (or, on
// MariaDB, childDialectEnv=mysql and childDSNEnv the test database's
// go-sql-driver DSN).
const (
	childEnv    = "TXOUTBOX_CHAOS_CHILD"
	childDSNEnv = "TXOUTBOX_CHAOS_DSN"
	// childDialectEnv is the database of childDSNEnv: "mysql" for
	// MySQL/MariaDB, PostgreSQL when unset.
	childDialectEnv = "TXOUTBOX_CHAOS_DIALECT"
	// childAMQPQueueEnv, when set, makes the subprocess publish to that
	// RabbitMQ queue through brokers/amqp instead of the deliveries table.
	childAMQPQueueEnv = "TXOUTBOX_CHAOS_AMQP_QUEUE"
	// childLagEnv, when set, replaces killConfirmLag in the subprocess (a
	// time.ParseDuration string).
	childLagEnv = "TXOUTBOX_CHAOS_CONFIRM_LAG"
)

// Shape of TestSIGKILLForwarder.
const (
	killEvents     = 20000
	killKeys       = 50
	killBatchSize  = 100
	killCount      = 5
	killConfirmLag = 20 * time.Millisecond // per Publish, after the delivery is recorded
)

// killSink is where the forwarder subprocess of runSIGKILL publishes, and
// what the test reads back: the deliveries, in the order they arrived.
type killSink struct {
	// env tells the subprocess where to publish, and on which database its
	// forwarder runs when that is not PostgreSQL.
	env []string
	// delivered counts the messages that arrived so far.
	delivered func() int64
	// deliveries returns every message that arrived, in order.
	deliveries func() []delivery
	// killDelay is the wait between the first delivery of a subprocess
	// and its kill. Optional; default 100-300 ms.
	killDelay func() time.Duration
}

// TestSIGKILLForwarder runs the SIGKILL scenario (runSIGKILL) with a
// publisher that records every published message in a table, committed
// before Publish returns, so what was published survives the kill.
func TestSIGKILLForwarder(t *testing.T) {
	db, schema := testdb.OpenPostgres(t)
	require.NoError(t, db.Exec(`CREATE TABLE deliveries (
	seq      BIGSERIAL PRIMARY KEY,
	uuid     TEXT NOT NULL,
	event_id TEXT NOT NULL,
	key      TEXT NOT NULL,
	kseq     INTEGER NOT NULL
)`).Error)
	runSIGKILL(t, db, testdb.SchemaURL(t, schema), killSink{
		delivered: func() int64 { return testdb.Count(t, db, "deliveries", "") },
		deliveries: func() []delivery {
			var rows []struct {
				UUID    string
				EventID string
				Key     string
				Kseq    int
			}
			require.NoError(t, db.Raw(`SELECT uuid, event_id, key, kseq FROM deliveries ORDER BY seq`).Scan(&rows).Error)
			ds := make([]delivery, len(rows))
			for i, r := range rows {
				ds[i] = delivery{UUID: r.UUID, Event: placed{ID: r.EventID, Key: r.Key, Seq: r.Kseq}}
			}
			return ds
		},
	})
}

// TestSIGKILLForwarderMariaDB runs the SIGKILL scenario (runSIGKILL) with
// the outbox and the deliveries table on MariaDB (TEST_MYSQL_URL): the
// subprocess's claims hold user locks (GET_LOCK) on connections that die
// with it, and the server must release them for the next process. A claim
// there takes longer than on PostgreSQL (over 100 ms at this backlog), so
// a kill 100-300 ms after the first delivery would land in the next claim;
// the subprocess waits 100 ms after each Publish instead of 20, and the kill
// comes 30-80 ms after the first delivery is seen: after that publish,
// before its rows are marked delivered.
func TestSIGKILLForwarderMariaDB(t *testing.T) {
	db, name := testdb.OpenMySQL(t)
	// key is a reserved word in MySQL: the column is quoted.
	require.NoError(t, db.Exec("CREATE TABLE deliveries ("+
		"seq BIGINT AUTO_INCREMENT PRIMARY KEY, "+
		"uuid VARCHAR(64) NOT NULL, "+
		"event_id VARCHAR(64) NOT NULL, "+
		"`key` VARCHAR(64) NOT NULL, "+
		"kseq INT NOT NULL)").Error)
	runSIGKILL(t, db, testdb.MySQLDSN(t, name), killSink{
		env:       []string{childDialectEnv + "=mysql", childLagEnv + "=100ms"},
		killDelay: func() time.Duration { return time.Duration(30+rand.IntN(51)) * time.Millisecond },
		delivered: func() int64 { return testdb.Count(t, db, "deliveries", "") },
		deliveries: func() []delivery {
			var rows []struct {
				UUID    string
				EventID string
				Key     string
				Kseq    int
			}
			require.NoError(t, db.Raw("SELECT uuid, event_id, `key`, kseq FROM deliveries ORDER BY seq").Scan(&rows).Error)
			ds := make([]delivery, len(rows))
			for i, r := range rows {
				ds[i] = delivery{UUID: r.UUID, Event: placed{ID: r.EventID, Key: r.Key, Seq: r.Kseq}}
			}
			return ds
		},
	})
}

// TestSIGKILLForwarderRabbitMQ runs the SIGKILL scenario (runSIGKILL) into
// RabbitMQ through package brokers/amqp, and counts what a separate
// consumer received from the queue, by message UUID.
func TestSIGKILLForwarderRabbitMQ(t *testing.T) {
	addr := amqpAddr(t)
	require.True(t, portOpen(addr), "RabbitMQ is not answering at %s (run scripts/ensure-services.sh rabbitmq, or `make test-chaos`)", addr)
	db, schema := testdb.OpenPostgres(t)
	queue := "txoutbox_chaos_kill_" + randomHex(6)
	declareQueue(t, queue)
	t.Cleanup(func() { deleteQueue(t, queue) })
	consumer := startQueueConsumer(t, queue)
	runSIGKILL(t, db, testdb.SchemaURL(t, schema), killSink{
		env:        []string{childAMQPQueueEnv + "=" + queue},
		delivered:  consumer.count,
		deliveries: consumer.deliveries,
	})
}

// runSIGKILL kills a forwarder process with SIGKILL in the middle of
// batches, five times, restarting it each time, then lets a last one drain
// the outbox. Every event must arrive at the sink at least once, the
// duplicates must not exceed one batch per kill, and per key the first
// deliveries must follow the commit order. db is the test's database, dsn
// what the subprocess opens to reach it.
func runSIGKILL(t *testing.T, db *gorm.DB, dsn string, sink killSink) {
	ctx := context.Background()
	require.NoError(t, gormstore.Migrate(ctx, db))
	store, err := gormstore.New(db, gormstore.Config{})
	require.NoError(t, err)
	tr, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: store})
	require.NoError(t, err)

	// 20,000 events on 50 keys, committed in 20 commands of 1,000.
	const perCommand = 1000
	for c := range killEvents / perCommand {
		err := tr.Run(ctx, "Fill", func(ctx context.Context) error {
			evs := make([]any, perCommand)
			for i := range evs {
				n := c*perCommand + i
				evs[i] = placed{ID: strconv.Itoa(n), Key: fmt.Sprintf("k%02d", n%killKeys), Seq: n / killKeys}
			}
			return outbox.Emit(ctx, evs...)
		})
		require.NoError(t, err)
	}

	var (
		out     lockedBuffer
		current *exec.Cmd
	)
	t.Cleanup(func() {
		if current != nil {
			_ = current.Process.Kill()
			_ = current.Wait()
		}
		if t.Failed() {
			t.Logf("forwarder subprocess output:\n%s", out.String())
		}
	})
	start := func() *exec.Cmd {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"=forwarder", childDSNEnv+"="+dsn)
		cmd.Env = append(cmd.Env, sink.env...)
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		current = cmd
		return cmd
	}
	delivered := sink.delivered
	pending := func() int64 { return testdb.Count(t, db, gormstore.DefaultTable, "") }

	kills := 0
	for kills < killCount {
		before := delivered()
		cmd := start()
		// Kill only once this process is publishing: 100-300 ms after its
		// first recorded delivery (or sink.killDelay), so the kill lands in
		// a batch.
		eventually(t, 30*time.Second, 5*time.Millisecond, func() (bool, string) {
			n := delivered()
			return n > before || pending() == 0, fmt.Sprintf("%d deliveries", n)
		}, "forwarder subprocess made no progress")
		if pending() == 0 {
			break
		}
		if sink.killDelay != nil {
			time.Sleep(sink.killDelay())
		} else {
			time.Sleep(time.Duration(100+rand.IntN(201)) * time.Millisecond)
		}
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		err := cmd.Wait()
		current = nil
		require.Error(t, err, "the subprocess must die of SIGKILL")
		kills++
		t.Logf("kill %d: %d deliveries recorded, %d rows left in the outbox", kills, delivered(), pending())
	}
	require.Equal(t, killCount, kills, "the backlog drained before the last kill; the test no longer kills in the middle of batches (slow the subprocess's publisher)")

	// The last process drains the outbox and stops gracefully.
	cmd := start()
	eventually(t, 60*time.Second, 50*time.Millisecond, func() (bool, string) {
		n := pending()
		return n == 0, fmt.Sprintf("%d rows left in the outbox", n)
	}, "outbox not drained after the kills")
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	require.NoError(t, cmd.Wait(), "the forwarder subprocess must stop cleanly on SIGINT")
	current = nil

	// Deliveries may still be on their way to the sink.
	eventually(t, 30*time.Second, 50*time.Millisecond, func() (bool, string) {
		n := delivered()
		return n >= killEvents, fmt.Sprintf("%d deliveries", n)
	}, "fewer deliveries than events")
	ds := sink.deliveries()
	uuidOf := map[string]string{} // event ID -> message UUID
	for _, d := range ds {
		if u, ok := uuidOf[d.Event.ID]; ok {
			require.Equal(t, u, d.UUID, "event %s redelivered with another message UUID", d.Event.ID)
		}
		uuidOf[d.Event.ID] = d.UUID
	}
	for n := range killEvents {
		_, ok := uuidOf[strconv.Itoa(n)]
		require.True(t, ok, "event %d was never delivered", n)
	}
	require.Len(t, uuidOf, killEvents, "deliveries of events that were never committed")
	dups := len(ds) - killEvents
	t.Logf("%d deliveries for %d events after %d kills: %d duplicates (bound %d)", len(ds), killEvents, kills, dups, kills*killBatchSize)
	require.LessOrEqual(t, dups, kills*killBatchSize, "more duplicates than one batch per kill")
	requireFirstDeliveriesInOrder(t, ds)
}

// runChild is the forwarder subprocess: a native forwarder on the database
// at childDSNEnv (PostgreSQL, or MySQL/MariaDB with childDialectEnv=mysql)
// publishing to a deliveryLog, until SIGINT or SIGTERM.
func runChild() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "chaos child:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dsn := os.Getenv(childDSNEnv)
	onMySQL := false
	dialector, sqlDriver := postgres.Open(dsn), "pgx"
	switch d := os.Getenv(childDialectEnv); d {
	case "":
	case "mysql":
		onMySQL = true
		dialector, sqlDriver = mysql.Open(dsn), "mysql"
	default:
		return fail(fmt.Errorf("unknown %s %q (want mysql, or unset for PostgreSQL)", childDialectEnv, d))
	}
	db, err := gorm.Open(dialector, &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return fail(err)
	}
	store, err := gormstore.New(db, gormstore.Config{})
	if err != nil {
		return fail(err)
	}
	// The delivery log has a pool of its own: its INSERTs commit on their
	// own, whatever the forwarder's claim transaction does.
	logDB, err := sql.Open(sqlDriver, dsn)
	if err != nil {
		return fail(err)
	}
	defer logDB.Close()
	var pub message.Publisher = &deliveryLog{db: logDB, mysql: onMySQL}
	if queue := os.Getenv(childAMQPQueueEnv); queue != "" {
		// Every event goes to the test's queue, whatever its topic.
		ap, err := bamqp.NewPublisher(ctx, bamqp.Config{URL: amqpURL(), Queue: func(string) string { return queue }})
		if err != nil {
			return fail(err)
		}
		defer ap.Close()
		pub = ap
	}
	lag := killConfirmLag
	if v := os.Getenv(childLagEnv); v != "" {
		if lag, err = time.ParseDuration(v); err != nil {
			return fail(fmt.Errorf("%s: %w", childLagEnv, err))
		}
	}
	pub = lagging{Publisher: pub, lag: lag}
	fw, err := outbox.NewForwarder(store, pub, outbox.ForwarderConfig{
		BatchSize:    killBatchSize,
		PollInterval: 200 * time.Millisecond,
		MinBackoff:   50 * time.Millisecond,
		MaxBackoff:   500 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return fail(err)
	}
	if err := fw.Run(ctx); err != nil {
		return fail(err)
	}
	return 0
}

// deliveryLog is a publisher that records each message in the deliveries
// table: one autocommit INSERT per Publish call, committed before Publish
// returns.
type deliveryLog struct {
	db *sql.DB
	// mysql selects the MySQL/MariaDB statement: a multi-row INSERT, whose
	// AUTO_INCREMENT values follow the order of its rows.
	mysql bool
}

func (p *deliveryLog) Publish(_ string, msgs ...*message.Message) error {
	uuids := make([]string, len(msgs))
	ids := make([]string, len(msgs))
	keys := make([]string, len(msgs))
	seqs := make([]int32, len(msgs))
	for i, m := range msgs {
		e, err := decodePlaced(m)
		if err != nil {
			return err
		}
		uuids[i], ids[i], keys[i], seqs[i] = m.UUID, e.ID, e.Key, int32(e.Seq)
	}
	if p.mysql {
		args := make([]any, 0, 4*len(msgs))
		for i := range msgs {
			args = append(args, uuids[i], ids[i], keys[i], seqs[i])
		}
		q := "INSERT INTO deliveries (uuid, event_id, `key`, kseq) VALUES " + strings.TrimSuffix(strings.Repeat("(?,?,?,?),", len(msgs)), ",")
		if _, err := p.db.Exec(q, args...); err != nil {
			return fmt.Errorf("record deliveries: %w", err)
		}
		return nil
	}
	_, err := p.db.Exec(`INSERT INTO deliveries (uuid, event_id, key, kseq)
SELECT u, e, k, s FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) WITH ORDINALITY AS m(u, e, k, s, o)
ORDER BY o`, uuids, ids, keys, seqs)
	if err != nil {
		return fmt.Errorf("record deliveries: %w", err)
	}
	return nil
}

func (p *deliveryLog) Close() error { return nil }

// lagging waits lag (killConfirmLag unless childLagEnv says otherwise)
// after each successful Publish, which is where most kills land: published,
// but not yet marked delivered.
type lagging struct {
	message.Publisher
	lag time.Duration
}

func (p lagging) Publish(topic string, msgs ...*message.Message) error {
	if err := p.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	time.Sleep(p.lag)
	return nil
}

// lockedBuffer is an io.Writer safe for the two pipes of a subprocess.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
