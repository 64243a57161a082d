package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/rcrowley/go-metrics"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/kafka"
	"github.com/txoutbox/txoutbox/outbox"
)

// childEnv makes the test binary run main instead of the tests, for
// TestMainSIGTERM.
const childEnv = "DEVKAFKA_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		main()
		os.Exit(0)
	}
	// Sarama's go-metrics meters start a goroutine that never ends.
	metrics.UseNilMetrics = true
	os.Exit(m.Run())
}

// readyAddr reads the ready line from r and returns the address in it.
func readyAddr(t *testing.T, r io.Reader) string {
	t.Helper()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		addr, ok := strings.CutPrefix(strings.TrimSpace(s), "devkafka: listening on ")
		require.True(t, ok, "ready line %q", s)
		return addr
	case <-time.After(10 * time.Second):
		t.Fatal("no ready line within 10s")
		return ""
	}
}

// publishTo publishes a message to topic on the broker at addr and
// returns the topic's partition count.
func publishTo(t *testing.T, addr, topic string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pub, err := kafka.NewPublisher(ctx, kafka.Config{Brokers: []string{addr}})
	require.NoError(t, err)
	defer pub.Close()
	msg := message.NewMessage(outbox.NewUUID(), []byte("hello"))
	msg.Metadata.Set(outbox.MetadataPartitionKey, "k")
	require.NoError(t, pub.Publish(topic, msg))

	conf := sarama.NewConfig()
	conf.Version = sarama.V2_3_0_0
	client, err := sarama.NewClient([]string{addr}, conf)
	require.NoError(t, err)
	defer client.Close()
	ps, err := client.Partitions(topic)
	require.NoError(t, err)
	return len(ps)
}

// TestRun starts devkafka on a free port, publishes to a topic it creates
// on first use and to a seeded one, each with -partitions partitions, and
// stops it by ending the context.
func TestRun(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, w := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-partitions", "3", "-topics", "seeded, other"}, w, io.Discard)
	}()
	addr := readyAddr(t, r)
	require.Equal(t, 3, publishTo(t, addr, "created-on-first-use"))
	require.Equal(t, 3, publishTo(t, addr, "seeded"))
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return after the context ended")
	}
}

// TestMainSIGTERM runs devkafka as a process, publishes to it, and stops
// it with SIGTERM: it must exit 0.
func TestMainSIGTERM(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-addr", "127.0.0.1:0", "-partitions", "2")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	addr := readyAddr(t, stdout)
	require.Equal(t, 2, publishTo(t, addr, "orders"))
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		require.NoError(t, err, "devkafka exit; stderr: %s", stderr.String())
	case <-time.After(5 * time.Second):
		t.Fatal("devkafka did not exit within 5s of SIGTERM")
	}
}

// TestRunFlags checks that bad flags are refused with a reason.
func TestRunFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-partitions", "0"}, "-partitions 0: must be at least 1"},
		{[]string{"-addr", "9092"}, `-addr "9092": want host:port`},
		{[]string{"-log-level", "loud"}, `-log-level "loud"`},
		{[]string{"extra"}, "unexpected arguments"},
	} {
		t.Run(fmt.Sprint(tc.args), func(t *testing.T) {
			err := run(context.Background(), tc.args, io.Discard, io.Discard)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
