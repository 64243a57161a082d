//go:build chaos

package chaos_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	bamqp "github.com/txoutbox/txoutbox/brokers/amqp"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Shape of TestSIGKILLConsumer.
const (
	consumerEvents = 5000
	consumerKeys   = 50
	consumerKills  = 4 // by the test, besides the subprocess's own
	// consumerSelfKill is how many messages the first subprocess commits
	// before it kills itself.
	consumerSelfKill = 500
	// childQueueEnv names the queue the consumer subprocess consumes.
	childQueueEnv = "TXOUTBOX_CHAOS_QUEUE"
	// childKillAfterEnv, when set to n, makes the consumer subprocess
	// SIGKILL itself as soon as n of its messages have committed, before
	// RabbitMQ has their acks (they are coalesced for up to MaxAckDelay).
	childKillAfterEnv = "TXOUTBOX_CHAOS_KILL_AFTER"
)

// projectedDDL is the consumer subprocess's projection: one row per
// message applied, without a unique constraint, so that a message applied
// twice shows as two rows; id gives the order of application.
const projectedDDL = `CREATE TABLE projected (
	id           BIGSERIAL PRIMARY KEY,
	message_uuid TEXT    NOT NULL,
	key          TEXT    NOT NULL,
	seq          INTEGER NOT NULL
)`

// TestSIGKILLConsumer kills an inbox.Consumer process with SIGKILL five
// times while it drains a RabbitMQ queue of 5,000 events on 50 keys
// (Concurrent delivery, 4 workers, batches of up to 100), then lets a last
// one finish. The first process kills itself right after a batch commit,
// before its acks leave (childKillAfterEnv); the test kills the next four
// at random moments. Acks trail commits (they are coalesced for up to
// 100ms), so kills land between a batch's commit and its ack: RabbitMQ
// redelivers messages the inbox already has. Every event must be applied
// exactly once, each key's in order, and the queue must end empty.
func TestSIGKILLConsumer(t *testing.T) {
	addr := amqpAddr(t)
	require.True(t, portOpen(addr), "RabbitMQ is not answering at %s (run scripts/ensure-services.sh rabbitmq, or `make test-chaos`)", addr)
	ctx := context.Background()
	db, schema := testdb.OpenPostgres(t)
	require.NoError(t, inbox.Migrate(ctx, db))
	require.NoError(t, db.Exec(projectedDDL).Error)
	queue := "txoutbox_chaos_consumer_" + randomHex(6)
	declareQueue(t, queue)
	t.Cleanup(func() { deleteQueue(t, queue) })

	pub, err := bamqp.NewPublisher(ctx, bamqp.Config{URL: amqpURL()})
	require.NoError(t, err)
	enc := outbox.NewEncoder(outbox.EncoderConfig{})
	var msgs []*message.Message
	for n := range consumerEvents {
		rec, err := enc.Encode(outbox.Entry{Event: placed{ID: strconv.Itoa(n), Key: fmt.Sprintf("k%02d", n%consumerKeys), Seq: n / consumerKeys}})
		require.NoError(t, err)
		msgs = append(msgs, rec.Message)
	}
	for i := 0; i < len(msgs); i += 500 {
		require.NoError(t, pub.Publish(queue, msgs[i:i+500]...))
	}
	require.NoError(t, pub.Close())

	projected := func() int64 { return testdb.Count(t, db, "projected", "") }
	var (
		current *exec.Cmd
		outs    []*lockedBuffer
	)
	t.Cleanup(func() {
		if current != nil {
			_ = current.Process.Kill()
			_ = current.Wait()
		}
		if t.Failed() {
			for i, o := range outs {
				t.Logf("consumer subprocess %d output:\n%s", i, o.String())
			}
		}
	})
	start := func(env ...string) *exec.Cmd {
		t.Helper()
		out := &lockedBuffer{}
		outs = append(outs, out)
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"=consumer", childDSNEnv+"="+testdb.SchemaURL(t, schema), childQueueEnv+"="+queue)
		cmd.Env = append(cmd.Env, env...)
		cmd.Stdout, cmd.Stderr = out, out
		require.NoError(t, cmd.Start())
		current = cmd
		return cmd
	}

	// The first process dies right after a commit, by its own hand.
	cmd := start(fmt.Sprintf("%s=%d", childKillAfterEnv, consumerSelfKill))
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		current = nil
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "the subprocess must die of SIGKILL")
		ws, ok := ee.Sys().(syscall.WaitStatus)
		require.True(t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL, "the subprocess must die of SIGKILL, not %v", err)
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		current = nil
		t.Fatalf("the subprocess did not kill itself after %d messages (%d projected)", consumerSelfKill, projected())
	}
	t.Logf("self-kill: %d of %d events projected", projected(), consumerEvents)

	for kill := 1; kill <= consumerKills; kill++ {
		before := projected()
		cmd := start()
		eventually(t, 30*time.Second, 5*time.Millisecond, func() (bool, string) {
			n := projected()
			return n > before, fmt.Sprintf("%d projected", n)
		}, "consumer subprocess made no progress")
		time.Sleep(time.Duration(50+rand.IntN(151)) * time.Millisecond)
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		require.Error(t, cmd.Wait(), "the subprocess must die of SIGKILL")
		current = nil
		n := projected()
		t.Logf("kill %d: %d of %d events projected", kill, n, consumerEvents)
		require.Less(t, n, int64(consumerEvents), "the queue drained before the last kill: the test no longer kills in the middle (slow the subprocess's handler)")
	}

	cmd = start()
	eventually(t, 60*time.Second, 20*time.Millisecond, func() (bool, string) {
		n := projected()
		return n >= consumerEvents, fmt.Sprintf("%d of %d projected", n, consumerEvents)
	}, "queue not drained after the kills")
	// Let redeliveries of already projected messages arrive, then stop.
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	require.NoError(t, cmd.Wait(), "the consumer subprocess must stop cleanly on SIGINT")
	current = nil

	// Exactly once.
	var rows, distinct int64
	require.NoError(t, db.Raw("SELECT count(*), count(DISTINCT message_uuid) FROM projected").Row().Scan(&rows, &distinct))
	require.EqualValues(t, consumerEvents, distinct, "every event applied")
	require.EqualValues(t, consumerEvents, rows, "no event applied twice")
	require.EqualValues(t, consumerEvents, testdb.Count(t, db, inbox.DefaultTable, ""))
	require.Zero(t, testdb.Count(t, db, inbox.DefaultTable+"_failed", ""))

	// Per key in order.
	var applied []struct {
		Key string
		Seq int
	}
	require.NoError(t, db.Raw("SELECT key, seq FROM projected ORDER BY id").Scan(&applied).Error)
	last := map[string]int{}
	for _, a := range applied {
		if prev, ok := last[a.Key]; ok {
			require.Greater(t, a.Seq, prev, "key %s applied out of order", a.Key)
		}
		last[a.Key] = a.Seq
	}

	// The kills landed between commit and ack: the later processes were
	// redelivered messages the inbox had, and acked them as duplicates.
	// Each process reports its count; a killed one up to 10ms late.
	re := regexp.MustCompile(`duplicates=(\d+)`)
	dups := make([]int, len(outs))
	total := 0
	for i, o := range outs {
		if m := re.FindAllStringSubmatch(o.String(), -1); len(m) > 0 {
			dups[i], _ = strconv.Atoi(m[len(m)-1][1])
			total += dups[i]
		}
	}
	t.Logf("redelivered messages acked as duplicates, per process: %v", dups)
	require.Positive(t, dups[1], "the process after the self-kill acked no duplicate: the self-kill did not land between a commit and its ack")
	require.Positive(t, total, "no kill landed between a commit and its ack")
	requireQueueEmpty(t, queue)
}

// requireQueueEmpty checks that queue holds no message.
func requireQueueEmpty(t *testing.T, queue string) {
	t.Helper()
	conn, err := dialAMQP()
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	eventually(t, 10*time.Second, 50*time.Millisecond, func() (bool, string) {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err == nil && q.Messages == 0, fmt.Sprintf("%d messages in %s (%v)", q.Messages, queue, err)
	}, "the queue is not empty")
}

// runConsumerChild is the subprocess of TestSIGKILLConsumer: an
// inbox.Consumer of the test's queue projecting into the projected table.
// It prints its duplicates count every 10ms. With childKillAfterEnv it
// kills itself right after a commit.
func runConsumerChild() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "chaos consumer child:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	db, err := gorm.Open(postgres.Open(os.Getenv(childDSNEnv)), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return fail(err)
	}
	in, err := inbox.New(db, inbox.Config{})
	if err != nil {
		return fail(err)
	}
	queue := os.Getenv(childQueueEnv)
	sub, err := bamqp.NewSubscriber(ctx, bamqp.Config{URL: amqpURL(), Prefetch: 400, Concurrent: true})
	if err != nil {
		return fail(err)
	}
	defer sub.Close()
	c, err := in.NewConsumer(inbox.ConsumerConfig{
		Name: "chaos.projection", Topics: []string{queue}, Subscriber: sub, Workers: 4, BatchSize: 100,
		Handler: func(msg *message.Message) error {
			var e placed
			if err := json.Unmarshal(msg.Payload, &e); err != nil {
				return inbox.Permanent(err)
			}
			tx, err := outbox.Tx(msg.Context())
			if err != nil {
				return err
			}
			// Slow enough for the kills to land in the middle of the drain.
			time.Sleep(200 * time.Microsecond)
			return tx.Exec("INSERT INTO projected (message_uuid, key, seq) VALUES (?, ?, ?)", msg.UUID, e.Key, e.Seq).Error
		},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return fail(err)
	}
	go func() {
		for ctx.Err() == nil {
			fmt.Printf("duplicates=%d\n", c.Stats().Duplicates)
			time.Sleep(10 * time.Millisecond)
		}
	}()
	if n, _ := strconv.ParseInt(os.Getenv(childKillAfterEnv), 10, 64); n > 0 {
		// Processed counts a batch's messages after its commit, just
		// before each is acked: dying at once leaves them committed and
		// not acked.
		go func() {
			for c.Stats().Processed < n {
				time.Sleep(50 * time.Microsecond)
			}
			fmt.Printf("killing myself after %d committed messages\n", c.Stats().Processed)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}()
	}
	if err := c.Run(ctx); err != nil {
		return fail(err)
	}
	fmt.Printf("duplicates=%d\n", c.Stats().Duplicates)
	return 0
}
