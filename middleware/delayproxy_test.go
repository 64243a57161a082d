package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/txoutbox/txoutbox/internal/testdb"
)

// BenchmarkDelayProxy measures a SELECT 1 round trip on one connection to
// the PostgreSQL test database, and reports its median as p50-µs: direct,
// through a delayProxy without delay (the proxy's own cost: one more
// loopback hop each way) and through one of rttDelay each way, as
// BenchmarkDispatch's rtt=0.5ms group uses it.
//
// Measured on the shared 2-core VM (two sets of 5 runs of 400; the runs'
// p50): direct 42 µs, proxy without delay 190 µs, proxy of 0.25 ms
// 640–680 µs. A round trip through the proxy thus takes about 0.6 ms more
// than directly: 0.45–0.5 ms of delay and the rest the proxy's own hops.
// Its goroutines cost about 0.2 ms of CPU per round trip (go-cpu-ns/op),
// mostly thread wake-ups.
func BenchmarkDelayProxy(b *testing.B) {
	for _, v := range []struct {
		name  string
		proxy bool
		delay time.Duration
	}{
		{"direct", false, 0},
		{"proxy,delay=0", true, 0},
		{"proxy,delay=0.25ms", true, rttDelay},
	} {
		b.Run(v.name, func(b *testing.B) {
			dsn := testdb.URL()
			if v.proxy {
				dsn = delayedURL(b, dsn, v.delay)
			}
			sqlDB, err := testdb.OpenURL(b, dsn).DB()
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			conn, err := sqlDB.Conn(ctx)
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = conn.Close() }()
			rtts := make([]time.Duration, 0, b.N)
			var one int
			cpu0 := processCPU(b)
			for b.Loop() {
				t := time.Now()
				if err := conn.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
					b.Fatal(err)
				}
				rtts = append(rtts, time.Since(t))
			}
			b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/float64(b.N), "go-cpu-ns/op")
			slices.Sort(rtts)
			b.ReportMetric(float64(rtts[len(rtts)/2].Nanoseconds())/1e3, "p50-µs")
		})
	}
}

// rttDelay is the delay BenchmarkDispatch's rtt=0.5ms group adds to each
// direction: 0.5 ms per round trip.
const rttDelay = 250 * time.Microsecond

// delayedURL starts a delayProxy of delay to the host:port of the
// PostgreSQL URL dsn, closed when tb ends, and returns dsn with the
// proxy's address in its place.
func delayedURL(tb testing.TB, dsn string, delay time.Duration) string {
	tb.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		tb.Fatalf("delay proxy: parse database URL: %v", err)
	}
	upstream := u.Host
	if u.Port() == "" {
		upstream = net.JoinHostPort(u.Hostname(), "5432")
	}
	p, err := startDelayProxy(upstream, delay)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := p.Close(); err != nil {
			tb.Error(err)
		}
	})
	u.Host = p.Addr()
	return u.String()
}

// delayProxy is a TCP proxy that adds latency and nothing else: every chunk
// it reads from one side is written to the other side delay after it was
// read, in order, and reading goes on meanwhile (bandwidth is not limited).
// A round trip through it takes 2×delay more than directly, plus the cost
// of the proxy's own loopback hop each way (BenchmarkDelayProxy measures
// both). Closing either side of a forwarded connection closes both.
type delayProxy struct {
	ln       net.Listener
	upstream string
	delay    time.Duration
	// wg counts the accept loop and the goroutines of every connection.
	wg sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// delayChunk is bytes read from one side, to be written at due.
type delayChunk struct {
	due  time.Time
	data []byte
}

// delayQueueLen bounds the chunks in flight per direction; the reader
// blocks only beyond it, far more than a fraction of a millisecond of
// database traffic.
const delayQueueLen = 1024

// startDelayProxy listens on a free port of 127.0.0.1 and forwards every
// connection to upstream (host:port) with delay added in each direction.
func startDelayProxy(upstream string, delay time.Duration) (*delayProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("delay proxy: listen: %w", err)
	}
	p := &delayProxy{ln: ln, upstream: upstream, delay: delay, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the proxy's host:port.
func (p *delayProxy) Addr() string { return p.ln.Addr().String() }

// Close stops the listener, closes every forwarded connection and waits
// for the proxy's goroutines to end.
func (p *delayProxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("delay proxy: close listener: %w", err)
	}
	return nil
}

// accept forwards each accepted connection to a new connection to the
// upstream, until accepting fails, as it does once Close closed the
// listener. A client whose upstream connection fails is disconnected.
func (p *delayProxy) accept() {
	defer p.wg.Done()
	dialer := net.Dialer{Timeout: 5 * time.Second}
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := dialer.Dial("tcp", p.upstream)
		if err != nil {
			_ = client.Close()
			continue
		}
		if !p.track(client, server) {
			_ = client.Close()
			_ = server.Close()
			return
		}
		p.wg.Add(2)
		go p.pipe(server, client)
		go p.pipe(client, server)
	}
}

// track records the connections for Close; it reports false once the
// proxy is closed.
func (p *delayProxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

// untrack forgets the connections.
func (p *delayProxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.conns, c)
	}
}

// pipe reads src and queues each chunk, stamped with its due time, for
// deliver to write to dst. When src ends, deliver writes what is queued
// and closes both connections.
func (p *delayProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	queue := make(chan delayChunk, delayQueueLen)
	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		deliver(dst, src, queue)
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			queue <- delayChunk{due: time.Now().Add(p.delay), data: append([]byte(nil), buf[:n]...)}
		}
		if err != nil {
			break
		}
	}
	close(queue)
	<-delivered
	p.untrack(dst, src)
}

// deliver writes each chunk of queue to dst once it is due. When the queue
// ends or a write fails it closes both connections, which ends the other
// direction too; after a failed write it drains the queue unwritten, so
// the reader never blocks on it.
func deliver(dst, src net.Conn, queue <-chan delayChunk) {
	lockPreciseWait()
	failed := false
	for c := range queue {
		if failed {
			continue
		}
		sleepUntil(c.due)
		if _, err := dst.Write(c.data); err != nil {
			failed = true
			_ = dst.Close()
			_ = src.Close()
		}
	}
	_ = dst.Close()
	_ = src.Close()
}

// TestDelayProxy checks that the proxy forwards both ways with its delay,
// and that closing the client closes the upstream side.
func TestDelayProxy(t *testing.T) {
	upstream, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = upstream.Close() }()
	echoed := make(chan error, 1)
	go func() {
		c, err := upstream.Accept()
		if err != nil {
			echoed <- err
			return
		}
		defer func() { _ = c.Close() }()
		_, err = io.Copy(c, c) // until the proxy closes its side
		echoed <- err
	}()
	const delay = 5 * time.Millisecond
	p, err := startDelayProxy(upstream.Addr().String(), delay)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	}()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); string(got) != "ping" || rtt < 2*delay {
		t.Errorf("echo %q after %v, want %q after %v or more", got, rtt, "ping", 2*delay)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-echoed; err != nil {
		t.Errorf("upstream side: %v", err)
	}
}
