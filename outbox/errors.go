package outbox

import "errors"

// Sentinel errors of the write path. They are wrapped with details such as
// the event type; compare with errors.Is.
var (
	// ErrNoTransaction is returned by Emit when the context does not belong
	// to a handler running under the transactional middleware.
	ErrNoTransaction = errors.New("outbox: no transactional handler in context (run the handler through middleware.Transactional)")
	// ErrCollectorClosed is returned by Emit after the command it belongs to
	// has finished; such an event can no longer be saved.
	ErrCollectorClosed = errors.New("outbox: Emit after the command finished; the event was not saved")
	// ErrReadOnly is returned by Emit inside a read-only transaction.
	ErrReadOnly = errors.New("outbox: cannot emit events from a read-only transaction")
	// ErrNilEvent is returned for a nil event.
	ErrNilEvent = errors.New("outbox: nil event")
	// ErrMarshal is returned when the marshaler cannot encode an event.
	ErrMarshal = errors.New("outbox: cannot marshal event")
	// ErrEmptyTopic is returned when an event resolves to an empty topic.
	ErrEmptyTopic = errors.New("outbox: empty topic")
	// ErrPayloadTooLarge is returned when a marshaled event exceeds
	// EncoderConfig.MaxPayloadBytes.
	ErrPayloadTooLarge = errors.New("outbox: payload too large")
	// ErrInvalidConfig is returned by the Validate methods of config structs.
	ErrInvalidConfig = errors.New("outbox: invalid config")
)

// ErrPublisherUnavailable marks a publish error that says the broker
// cannot be reached at all (not connected, connection refused), as
// opposed to an error about the message. The forwarder takes a batch in
// which nothing was published and a publish failed with it for an outage,
// even when only one key failed: it backs off and parks nothing, so a
// service whose broker is away keeps its events pending however long the
// broker stays away. Mark an error with [Unavailable]; the publishers of
// package brokers do.
var ErrPublisherUnavailable = errors.New("outbox: publisher unavailable")

// Unavailable returns err marked with [ErrPublisherUnavailable]: its text
// is err's, and errors.Is matches both err's chain and
// ErrPublisherUnavailable. It returns nil for a nil err.
func Unavailable(err error) error {
	if err == nil || errors.Is(err, ErrPublisherUnavailable) {
		return err
	}
	return unavailableError{err}
}

type unavailableError struct{ err error }

func (e unavailableError) Error() string   { return e.err.Error() }
func (e unavailableError) Unwrap() []error { return []error{e.err, ErrPublisherUnavailable} }
