// Package lateproxy is a TCP proxy for tests that need a service to
// appear after its client started: nothing listens on the proxy's address
// until Start, and from then on every connection is forwarded to the real
// service. Stop closes the listener and every forwarded connection, like a
// service that went away.
package lateproxy

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// Proxy forwards Addr to a target once started.
type Proxy struct {
	// Addr is the proxy's host:port on 127.0.0.1.
	Addr   string
	target string

	mu    sync.Mutex
	ln    net.Listener
	conns []net.Conn
}

// New reserves a free port on 127.0.0.1 for a proxy to target (host:port)
// and leaves it closed. tb's cleanup stops the proxy.
func New(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target}
	if err := ln.Close(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Stop)
	return p
}

// URL returns rawURL with its first occurrence of the target's host:port
// replaced by the proxy's.
func (p *Proxy) URL(rawURL string) string { return strings.Replace(rawURL, p.target, p.Addr, 1) }

// Start listens on Addr and forwards every connection to the target.
func (p *Proxy) Start(tb testing.TB) {
	tb.Helper()
	ln, err := net.Listen("tcp", p.Addr)
	if err != nil {
		tb.Fatal(err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
			go func() { _, _ = io.Copy(c, up); _ = c.Close() }()
		}
	}()
}

// Stop closes the listener and every forwarded connection.
func (p *Proxy) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}
