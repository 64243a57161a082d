// Package unavail marks the publish errors of the broker packages that say
// the broker cannot be reached with outbox.ErrPublisherUnavailable, so that
// the outbox forwarder takes them for an outage (and parks nothing) even
// when a single key is pending.
package unavail

import (
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/txoutbox/txoutbox/outbox"
)

// Mark returns err marked with outbox.ErrPublisherUnavailable (see
// outbox.Unavailable).
func Mark(err error) error { return outbox.Unavailable(err) }

// IfNetwork marks err when it is a network failure: a refused, reset or
// closed connection, a dial or read error, an unexpected EOF. Other errors,
// nil included, are returned unchanged.
func IfNetwork(err error) error {
	if err == nil {
		return nil
	}
	var opErr *net.OpError
	switch {
	case errors.As(err, &opErr),
		errors.Is(err, net.ErrClosed),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE):
		return outbox.Unavailable(err)
	}
	return err
}
