package gormstore

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/txoutbox/txoutbox/internal/walmsg"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// ErrWALNotReady is returned by a store in WAL mode (Config.WAL) for a
// database that cannot carry its events yet: wal_level is not logical, or
// the replication slot does not exist. Nothing is saved.
var ErrWALNotReady = errors.New("gormstore: the WAL mode is not ready")

// Defaults of [WALConfig]: the names package walrelay uses by default.
const (
	// DefaultWALSlot is the default WALConfig.Slot.
	DefaultWALSlot = "txoutbox"
	// DefaultWALPrefix is the default WALConfig.Prefix.
	DefaultWALPrefix = walmsg.DefaultPrefix
)

// WALConfig configures the WAL mode of a PostgreSQL store (Config.WAL):
// each command's events are written as one transactional logical decoding
// message (pg_logical_emit_message) instead of table rows, and package
// walrelay relays them from a replication slot in commit order. The table
// stays: it is where the relay parks events that cannot be published.
type WALConfig struct {
	// Slot is the logical replication slot the relay reads. The store
	// checks that it exists before its first write: a slot never sees
	// messages written before it was created (create it with
	// walrelay.Setup). Lower-case letters, digits and underscores, at
	// most 63 characters. Optional; default DefaultWALSlot.
	Slot string
	// Prefix is the prefix of the messages, the relay's Config.Prefix.
	// Optional; default DefaultWALPrefix.
	Prefix string
}

// slotNameRE matches the replication slot names PostgreSQL accepts.
var slotNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

func (c *WALConfig) validate() error {
	if c.Slot != "" && !slotNameRE.MatchString(c.Slot) {
		return fmt.Errorf("%w: WAL.Slot %q must be 1 to 63 lower-case letters, digits or underscores", ErrInvalidConfig, c.Slot)
	}
	return nil
}

func (c WALConfig) withDefaults() WALConfig {
	if c.Slot == "" {
		c.Slot = DefaultWALSlot
	}
	if c.Prefix == "" {
		c.Prefix = DefaultWALPrefix
	}
	return c
}

// walReadyError returns the error for a database whose wal_level is level
// and on which the slot exists or not; nil when the WAL mode can write.
func walReadyError(level string, slotExists bool, slot string) error {
	if level != "logical" {
		return fmt.Errorf("%w: it needs wal_level=logical and the server has wal_level=%s: ALTER SYSTEM SET wal_level = logical and restart PostgreSQL (on a managed server, see docs/operations.md)", ErrWALNotReady, level)
	}
	if !slotExists {
		return fmt.Errorf("%w: no logical replication slot %q (pgoutput) in this database: create it with walrelay.Setup before the first write; a slot never sees events written before it exists", ErrWALNotReady, slot)
	}
	return nil
}

// emit writes records as one logical decoding message in tx (Save in WAL
// mode).
func (s *Store) emit(ctx context.Context, tx *gorm.DB, records []outbox.Record) error {
	pool := tx.Statement.ConnPool
	if !s.walReady.Load() {
		var level string
		var exists bool
		if err := pool.QueryRowContext(ctx, s.sql["wal_ready"], s.wal.Slot).Scan(&level, &exists); err != nil {
			return fmt.Errorf("gormstore: check the WAL mode: %w", err)
		}
		if err := walReadyError(level, exists, s.wal.Slot); err != nil {
			return err
		}
		s.walReady.Store(true)
	}
	content, err := walmsg.Encode(records)
	if err != nil {
		return fmt.Errorf("gormstore: %w", err)
	}
	if _, err := pool.ExecContext(ctx, s.sql["emit"], s.wal.Prefix, content); err != nil {
		return fmt.Errorf("gormstore: emit the events: %w", err)
	}
	return nil
}
