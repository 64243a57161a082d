package walrelay

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/txoutbox/txoutbox/internal/walmsg"
	"github.com/txoutbox/txoutbox/outbox"
)

// Defaults of [Config].
const (
	// DefaultSlot is the default replication slot name.
	DefaultSlot = "txoutbox"
	// DefaultPublication is the default publication name.
	DefaultPublication = "txoutbox"
	// DefaultPrefix is the default prefix of the logical decoding
	// messages that carry events.
	DefaultPrefix = walmsg.DefaultPrefix
	// DefaultStatusInterval is the default Config.StatusInterval.
	DefaultStatusInterval = time.Second
)

// heartbeat is the longest time between two status updates: well within
// PostgreSQL's default wal_sender_timeout (60s), after which the server
// drops a replication connection that sent nothing. A server with a
// shorter timeout asks for a reply, which the relay sends at once.
const heartbeat = 10 * time.Second

// maxOutageBackoff caps the wait after consecutive failed sessions, as
// the table relay caps its wait after failed batches.
const maxOutageBackoff = 30 * time.Second

// Config configures [Setup] and a [Relay]. The zero value is valid: every
// field has a default.
type Config struct {
	// Slot is the logical replication slot the relay reads, created by
	// Setup with the pgoutput plugin. Lower-case letters, digits and
	// underscores, at most 63 characters. Optional; default DefaultSlot.
	Slot string
	// Publication is the publication the slot streams with, created by
	// Setup with no tables: logical decoding messages are sent whatever
	// the publication holds. Lower-case letters, digits and underscores,
	// at most 63 characters. Optional; default DefaultPublication.
	Publication string
	// Prefix selects the logical decoding messages that carry events;
	// messages with another prefix are skipped. Optional; default
	// DefaultPrefix.
	Prefix string
	// StatusInterval is the shortest time between two status updates
	// that confirm progress to the server, unless the server asks for a
	// reply; progress is confirmed at least every 10s whatever it is.
	// Optional; default DefaultStatusInterval (1s).
	StatusInterval time.Duration
	// Table is the outbox table into which the relay parks an event that
	// keeps failing (after MaxAttempts, while the publisher is not down),
	// with its error, and writes the later events of its partition key,
	// behind it, until the table has no undelivered row of the key left;
	// other keys go on from the stream. The table's forwarder
	// (outbox.NewForwarder on the same *gormstore.Store) must run on it:
	// it delivers the key's events once the parked row is requeued or
	// discarded. The relay assumes that the rows of a key enter the table
	// only through it, or were there when it started streaming.
	// Optional: without it an event that would be parked is retried every
	// MaxBackoff, and its key's later events wait behind it in memory.
	Table Table
	// WarnRetainedBytes is the WAL the slot may retain before the relay
	// warns in its log (at most every 5 minutes) and Stats sets
	// OverThreshold: a relay that is down or behind makes PostgreSQL keep
	// WAL until the slot confirms it. The relay checks at the start of
	// each session and every minute while it runs. Optional; default
	// DefaultWarnRetainedBytes (1 GiB).
	WarnRetainedBytes int64
	// Forwarder configures publishing, as for the table's forwarder: of
	// it the relay uses BatchSize (the most events per publish),
	// PollInterval (how often a relay that stands by tries to become the
	// reader), MaxAttempts, MinBackoff, MaxBackoff, ShutdownTimeout,
	// Logger, PublishCompressed, Compressors and the telemetry fields.
	Forwarder outbox.ForwarderConfig
}

// identRE matches the slot and publication names the relay accepts:
// replication slot names allow nothing else.
var identRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// Validate reports every problem with the config.
func (c Config) Validate() error {
	var errs []error
	if c.Slot != "" && !identRE.MatchString(c.Slot) {
		errs = append(errs, fmt.Errorf("%w: Slot %q must be 1 to 63 lower-case letters, digits or underscores", outbox.ErrInvalidConfig, c.Slot))
	}
	if c.Publication != "" && !identRE.MatchString(c.Publication) {
		errs = append(errs, fmt.Errorf("%w: Publication %q must be 1 to 63 lower-case letters, digits or underscores", outbox.ErrInvalidConfig, c.Publication))
	}
	if c.WarnRetainedBytes < 0 {
		errs = append(errs, fmt.Errorf("%w: WarnRetainedBytes is negative (use 0 for the default)", outbox.ErrInvalidConfig))
	}
	if c.StatusInterval < 0 {
		errs = append(errs, fmt.Errorf("%w: StatusInterval is negative (use 0 for the default)", outbox.ErrInvalidConfig))
	}
	if err := c.Forwarder.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// withDefaults returns c with every unset field set to its default.
func (c Config) withDefaults() Config {
	if c.Slot == "" {
		c.Slot = DefaultSlot
	}
	if c.Publication == "" {
		c.Publication = DefaultPublication
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = DefaultStatusInterval
	}
	if c.WarnRetainedBytes == 0 {
		c.WarnRetainedBytes = DefaultWarnRetainedBytes
	}
	f := &c.Forwarder
	if f.BatchSize == 0 {
		f.BatchSize = outbox.DefaultBatchSize
	}
	if f.PollInterval == 0 {
		f.PollInterval = outbox.DefaultPollInterval
	}
	if f.MaxBackoff == 0 {
		f.MaxBackoff = max(outbox.DefaultMaxBackoff, f.MinBackoff)
	}
	if f.MinBackoff == 0 {
		f.MinBackoff = min(outbox.DefaultMinBackoff, f.MaxBackoff)
	}
	if f.ShutdownTimeout == 0 {
		f.ShutdownTimeout = outbox.DefaultShutdownTimeout
	}
	if f.Logger == nil {
		f.Logger = slog.Default()
	}
	return c
}
