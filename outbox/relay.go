package outbox

import (
	"context"
	"errors"
	"time"
)

// Row is an outbox row claimed for relaying, in its stored form.
type Row struct {
	// ID is the row's identity; rows are relayed in ID order per partition key.
	ID int64
	// UUID is the message UUID.
	UUID string
	// Topic is the topic to publish to.
	Topic string
	// PartitionKey is the ordering key; "" means unordered.
	PartitionKey string
	// Payload is the message payload.
	Payload []byte
	// Metadata is the message metadata as a JSON object of strings.
	Metadata []byte
	// Attempts is the number of failed publish attempts so far.
	Attempts int
}

// Failure records a failed publish attempt of one row.
type Failure struct {
	// ID is the row's ID.
	ID int64
	// Error is the error text stored in the row's last_error.
	Error string
	// Park parks the row as failed: it is not retried until requeued, and
	// its key's later rows wait behind it.
	Park bool
	// RetryAfter is the delay before the next attempt when Park is false.
	RetryAfter time.Duration
}

// Claim is a batch of rows claimed by one forwarder. Until it is finished
// or released no other forwarder relays these rows, nor any later row of
// their partition keys.
type Claim interface {
	// Rows returns the claimed rows in ID order.
	Rows() []Row
	// Finish marks delivered rows delivered (deleted, or kept with a
	// delivered time), records failures (attempts + 1, last error, retry
	// time or parked), and releases every other claimed row untouched, all
	// in one atomic step.
	Finish(ctx context.Context, delivered []int64, failures []Failure) error
	// Release gives every claimed row back untouched.
	Release(ctx context.Context) error
}

// ClaimParams selects the rows of a claim.
type ClaimParams struct {
	// Limit is the most rows to claim.
	Limit int
	// Topics, when not empty, restricts the claim to these topics.
	Topics []string
	// ExcludeKeys lists partition keys the caller holds in another claim
	// that is still open. The claim skips their rows without trying to
	// take them, so a forwarder can claim its next batch from the other
	// keys while it publishes the current one. Stores that serialise
	// claims (SQLite) may ignore it.
	ExcludeKeys []string
}

// RelayStore is the side of a [Store] that a [Forwarder] reads from.
// Package gormstore implements it for PostgreSQL and MySQL (several
// forwarders at once) and SQLite (one forwarder per database file);
// package outboxtest's
// ExerciseRelay checks the whole contract against a backend.
type RelayStore interface {
	// Claim claims up to p.Limit committed, due rows: the oldest first,
	// and for each partition key only a prefix of its undelivered rows in
	// ID order, stopping before the key's first blocked row (parked, or
	// waiting for its retry time), which is never returned. It holds only
	// the keys of the rows it returns, so a concurrent claim (another
	// forwarder, or this forwarder's next batch) can take the others. It
	// returns a claim with no rows when nothing is due.
	Claim(ctx context.Context, p ClaimParams) (Claim, error)
	// Stats reports what is waiting in the outbox.
	Stats(ctx context.Context) (Stats, error)
}

// DueChecker is implemented by stores that can tell cheaply, without a
// transaction, whether any row is due. A forwarder asks first when its
// poll timer wakes it, after a short batch, and when a notification alone
// wakes it while Wake is in use or after such a claim found nothing; so an
// idle forwarder sends one query per PollInterval.
type DueChecker interface {
	// HasDue reports whether a row of the given topics (all when empty)
	// is due for relaying: a claim would find it, unless another forwarder
	// holds its key. Rows that wait behind a parked or retrying row of
	// their key are not due.
	HasDue(ctx context.Context, topics []string) (bool, error)
}

// ErrListenUnsupported is returned by a Listener whose database cannot
// notify (MySQL, SQLite); the forwarder then relies on wake-ups and
// polling.
var ErrListenUnsupported = errors.New("outbox: store cannot listen for commits")

// Listener is implemented by stores that can wake a forwarder when rows
// are committed by any process (PostgreSQL LISTEN/NOTIFY).
type Listener interface {
	// Listen calls wake once when it starts listening (to catch up on
	// rows committed before) and after rows are committed, until ctx ends
	// or the connection fails; it returns the reason it stopped.
	Listen(ctx context.Context, wake func()) error
}

// Stats describes the rows waiting in an outbox.
type Stats struct {
	// Pending counts rows not yet delivered and not parked.
	Pending int64
	// Failed counts parked rows.
	Failed int64
	// OldestPendingAge is the age of the oldest pending row, 0 when none.
	OldestPendingAge time.Duration
	// Topics breaks the numbers down per topic.
	Topics map[string]TopicStats
}

// TopicStats describes the rows of one topic.
type TopicStats struct {
	// Pending counts rows not yet delivered and not parked.
	Pending int64
	// Failed counts parked rows.
	Failed int64
	// OldestPendingAge is the age of the oldest pending row, 0 when none.
	OldestPendingAge time.Duration
}
