package amqp_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
)

// ackFrame is a basic.ack or basic.nack a client sent.
type ackFrame struct {
	Nack bool
	// Conn numbers the proxy's connections from 0, in the order they
	// were accepted; delivery tags belong to a connection's channel.
	Conn     int
	Channel  uint16
	Tag      uint64
	Multiple bool
	Requeue  bool // nack only
}

func (f ackFrame) String() string {
	kind := "ack"
	if f.Nack {
		kind = "nack"
	}
	return fmt.Sprintf("%s(conn %d, ch %d, tag %d, multiple %v, requeue %v)", kind, f.Conn, f.Channel, f.Tag, f.Multiple, f.Requeue)
}

// frameProxy forwards TCP connections to RabbitMQ and records the
// basic.ack and basic.nack frames clients send through it: what RabbitMQ
// receives, frame by frame.
type frameProxy struct {
	url string

	mu     sync.Mutex
	frames []ackFrame
}

// newFrameProxy starts a proxy to the RabbitMQ of amqpURL; it stops when t
// ends.
func newFrameProxy(t *testing.T) *frameProxy {
	t.Helper()
	uri, err := amqp091.ParseURI(brokertest.AMQPURL())
	require.NoError(t, err)
	target := net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().(*net.TCPAddr)
	uri.Host, uri.Port = "127.0.0.1", addr.Port
	p := &frameProxy{url: uri.String()}

	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Go(func() {
		for conn := 0; ; conn++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(c, up); _ = c.Close() })
			wg.Go(func() { p.forward(up, c, conn); _ = up.Close() })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

// URL is the proxy's AMQP URL.
func (p *frameProxy) URL() string { return p.url }

// forward copies the client's protocol header and frames to up, recording
// the acknowledgements among them as the ones of connection conn.
func (p *frameProxy) forward(up io.Writer, client io.Reader, conn int) {
	r := bufio.NewReaderSize(client, 64<<10)
	w := bufio.NewWriterSize(up, 64<<10)
	header := make([]byte, 8) // "AMQP" 0 0 9 1
	if _, err := io.ReadFull(r, header); err != nil {
		return
	}
	if _, err := w.Write(header); err != nil {
		return
	}
	for {
		if r.Buffered() == 0 {
			if w.Flush() != nil {
				return
			}
		}
		// type(1) channel(2) size(4) payload(size) end(1)
		head := make([]byte, 7)
		if _, err := io.ReadFull(r, head); err != nil {
			return
		}
		size := binary.BigEndian.Uint32(head[3:])
		body := make([]byte, size+1)
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		if _, err := w.Write(head); err != nil {
			return
		}
		if _, err := w.Write(body); err != nil {
			return
		}
		if head[0] != 1 || size < 4 {
			continue // not a method frame
		}
		class, method := binary.BigEndian.Uint16(body), binary.BigEndian.Uint16(body[2:])
		if class != 60 || (method != 80 && method != 120) || size < 13 {
			continue // not basic.ack, basic.nack
		}
		bits := body[12]
		f := ackFrame{
			Nack:     method == 120,
			Conn:     conn,
			Channel:  binary.BigEndian.Uint16(head[1:]),
			Tag:      binary.BigEndian.Uint64(body[4:]),
			Multiple: bits&1 != 0,
			Requeue:  method == 120 && bits&2 != 0,
		}
		p.mu.Lock()
		p.frames = append(p.frames, f)
		p.mu.Unlock()
	}
}

// Frames returns the acknowledgements recorded so far, in order.
func (p *frameProxy) Frames() []ackFrame {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]ackFrame(nil), p.frames...)
}

// waitFrame waits until a recorded frame satisfies ok.
func (p *frameProxy) waitFrame(t *testing.T, timeout time.Duration, ok func(ackFrame) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, f := range p.Frames() {
			if ok(f) {
				return
			}
		}
		if time.Now().After(deadline) {
			require.FailNow(t, "frame not seen", "after %v; frames: %v", timeout, p.Frames())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readyMessages returns how many messages wait in queue, ready for
// delivery (not counting those delivered and not acknowledged).
func readyMessages(t *testing.T, queue string) int {
	t.Helper()
	conn, err := amqp091.Dial(brokertest.AMQPURL())
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	require.NoError(t, err)
	return q.Messages
}

// requireReady checks that queue has want ready messages within a second
// and still has after another half second: messages of a closed channel
// return to the queue asynchronously.
func requireReady(t *testing.T, queue string, want int) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for readyMessages(t, queue) != want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	require.Equal(t, want, readyMessages(t, queue))
	time.Sleep(500 * time.Millisecond)
	require.Equal(t, want, readyMessages(t, queue), "messages went back to the queue: acks lost")
}

// logCounter is a watermill.LoggerAdapter that counts lines by level.
type logCounter struct {
	mu    sync.Mutex
	lines map[string][]string // level -> lines
}

func newLogCounter() *logCounter { return &logCounter{lines: map[string][]string{}} }

func (l *logCounter) add(level, msg string, err error, fields watermill.LogFields) {
	l.mu.Lock()
	defer l.mu.Unlock()
	line := msg
	if err != nil {
		line += ": " + err.Error()
	}
	l.lines[level] = append(l.lines[level], fmt.Sprintf("%s %v", line, fields))
}

func (l *logCounter) Error(msg string, err error, fields watermill.LogFields) {
	l.add("error", msg, err, fields)
}
func (l *logCounter) Info(msg string, fields watermill.LogFields)  { l.add("info", msg, nil, fields) }
func (l *logCounter) Debug(msg string, fields watermill.LogFields) { l.add("debug", msg, nil, fields) }
func (l *logCounter) Trace(msg string, fields watermill.LogFields) { l.add("trace", msg, nil, fields) }
func (l *logCounter) With(watermill.LogFields) watermill.LoggerAdapter {
	return l
}

// Lines returns the lines logged at level.
func (l *logCounter) Lines(level string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines[level]...)
}
