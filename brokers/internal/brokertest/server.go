package brokertest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago:
// nothing listens on it, so connections are refused until something
// starts there.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

// SilentListener returns the host:port of a listener that accepts TCP
// connections and never answers, like a host that is up but whose server
// hangs. The listener and every connection close when the test ends.
func SilentListener(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		accepting sync.WaitGroup
		mu        sync.Mutex
		conns     []net.Conn
	)
	accepting.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		_ = l.Close()
		accepting.Wait()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return l.Addr().String()
}

// ServerConfig says how to run a broker server of a test's own.
type ServerConfig struct {
	// Name is the server's executable, looked up in PATH: "nats-server".
	// Required.
	Name string
	// Env is the environment variable that gives the executable's path
	// instead: "TEST_NATS_SERVER". Required.
	Env string
	// Fallback is the executable's path when Name is not in PATH:
	// "/usr/sbin/nats-server". Optional.
	Fallback string
	// Install says how to install the server, for the failure when it is
	// missing: "scripts/ensure-services.sh nats". Required.
	Install string
	// Args returns the server's arguments (without the executable) for
	// listening on 127.0.0.1:port. Required.
	Args func(port int) []string
	// Ready reports whether the server at addr (host:port) serves. Start
	// returns once it returns nil. Optional; the default: addr accepts
	// TCP connections.
	Ready func(addr string) error
}

// Server is a broker server process of a test's own, on a port of its
// own, for what the shared server must not do: run with other flags, or
// go away and come back. The process is killed when the test ends.
type Server struct {
	t     testing.TB
	name  string
	args  []string
	port  int
	ready func(addr string) error
	cmd   *exec.Cmd
}

// StartServer starts the server cfg describes on a [FreePort] and waits
// until it is ready. It fails the test, saying how to install it, when
// the executable is missing.
func StartServer(t testing.TB, cfg ServerConfig) *Server {
	t.Helper()
	bin := os.Getenv(cfg.Env)
	if bin == "" {
		var err error
		if bin, err = exec.LookPath(cfg.Name); err != nil {
			bin = cfg.Fallback
		}
	}
	_, err := os.Stat(bin)
	require.NoError(t, err, "this test runs a %s of its own: install it (%s) or set %s", cfg.Name, cfg.Install, cfg.Env)
	port := FreePort(t)
	s := &Server{t: t, name: cfg.Name, args: append([]string{bin}, cfg.Args(port)...), port: port, ready: cfg.Ready}
	if s.ready == nil {
		s.ready = func(addr string) error {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				_ = c.Close()
			}
			return err
		}
	}
	t.Cleanup(s.Stop)
	s.Start()
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// Start starts the server again after [Server.Stop], on the same port
// with the same arguments, and waits up to 10 seconds until it is ready.
func (s *Server) Start() {
	s.t.Helper()
	s.cmd = exec.Command(s.args[0], s.args[1:]...)
	require.NoError(s.t, s.cmd.Start())
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.ready(s.Addr())
		if err == nil {
			return
		}
		require.True(s.t, time.Now().Before(deadline), "%s did not start: %v", s.name, err)
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server, like a crash, and waits until it is gone. It
// does nothing if the server is stopped already.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}
