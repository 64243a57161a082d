package gormstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// Stats reports pending and parked rows, overall and per topic, in one
// query. The age of the oldest pending row is taken by the clock that
// timestamped the rows: the database's on PostgreSQL, the machine's on
// SQLite.
func (s *Store) Stats(ctx context.Context) (outbox.Stats, error) {
	type topicRow struct {
		Topic   string
		Pending int64
		Failed  int64
		AgeSecs sql.NullFloat64
	}
	var rows []topicRow
	if err := s.db.WithContext(ctx).Raw(s.sql["stats"]).Scan(&rows).Error; err != nil {
		return outbox.Stats{}, fmt.Errorf("gormstore: stats of %s: %w", s.table, err)
	}
	st := outbox.Stats{Topics: make(map[string]outbox.TopicStats, len(rows))}
	for _, r := range rows {
		ts := outbox.TopicStats{Pending: r.Pending, Failed: r.Failed}
		if r.AgeSecs.Valid {
			ts.OldestPendingAge = max(time.Duration(r.AgeSecs.Float64*float64(time.Second)), 0)
		}
		st.Topics[r.Topic] = ts
		st.Pending += ts.Pending
		st.Failed += ts.Failed
		st.OldestPendingAge = max(st.OldestPendingAge, ts.OldestPendingAge)
	}
	return st, nil
}

// FailedRow is a parked outbox row.
type FailedRow struct {
	// ID is the row's identity.
	ID int64
	// UUID is the message UUID.
	UUID string
	// Topic is the message topic.
	Topic string
	// PartitionKey is the ordering key; its later rows wait behind this one.
	PartitionKey string
	// Attempts is the number of failed publish attempts.
	Attempts int
	// LastError is the error of the last attempt, or why the row could not
	// be decoded.
	LastError string
	// CreatedAt is when the row was written.
	CreatedAt time.Time
	// FailedAt is when the row was parked.
	FailedAt time.Time
}

// ListFailed returns up to limit parked rows, oldest first, starting after
// the row with ID afterID (0 for the first page).
func (s *Store) ListFailed(ctx context.Context, afterID int64, limit int) ([]FailedRow, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("%w: limit %d must be positive", ErrInvalidConfig, limit)
	}
	var rows []FailedRow
	err := s.db.WithContext(ctx).Raw(s.sql["list_failed"], afterID, limit).Scan(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("gormstore: list failed rows of %s: %w", s.table, err)
	}
	return rows, nil
}

// ErrNotFound is returned when no row matches, such as by GetFailed for an
// ID that is not a parked row.
var ErrNotFound = errors.New("gormstore: not found")

// FailedEvent is a parked row whole, as GetFailed returns it: the columns
// ListFailed lists, and the message the forwarder would publish.
type FailedEvent struct {
	FailedRow
	// Metadata is the message metadata as stored: a JSON object of
	// strings, unless its not being one is why the row was parked.
	Metadata string
	// Payload is the message payload.
	Payload []byte
}

// GetFailed returns the parked row with the given ID. It returns an error
// wrapping ErrNotFound when there is no such row, or when the row is
// pending or delivered.
func (s *Store) GetFailed(ctx context.Context, id int64) (FailedEvent, error) {
	var rows []FailedEvent
	err := s.db.WithContext(ctx).Raw(s.sql["get_failed"], id).Scan(&rows).Error
	if err != nil {
		return FailedEvent{}, fmt.Errorf("gormstore: get failed row %d of %s: %w", id, s.table, err)
	}
	if len(rows) == 0 {
		return FailedEvent{}, fmt.Errorf("%w: no parked row with ID %d in %s", ErrNotFound, id, s.table)
	}
	return rows[0], nil
}

// Requeue makes the parked rows with the given IDs pending again, with
// their attempts reset; it returns how many rows it changed. Requeue a
// key's parked row after fixing what made it fail: the key's later rows
// then flow again, in order.
func (s *Store) Requeue(ctx context.Context, ids ...int64) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	return s.requeue(ctx, "requeue", ids)
}

// RequeueIDs is Requeue that says which rows it changed: it returns the
// IDs of the rows it requeued, ascending. A given ID missing from the
// result was not a parked row (no such row, or one pending or delivered).
func (s *Store) RequeueIDs(ctx context.Context, ids ...int64) ([]int64, error) {
	if len(ids) == 0 {
		return []int64{}, nil
	}
	return s.changeParked(ctx, "requeue", ids, func(tx *gorm.DB, ids []int64) error {
		return tx.Exec(s.sql["requeue"], append(s.drv.nowArgs(), ids)...).Error
	})
}

// RequeueAll makes every parked row pending again.
func (s *Store) RequeueAll(ctx context.Context) (int64, error) {
	return s.requeue(ctx, "requeue_all")
}

// RequeueTopic makes every parked row of topic pending again; see Requeue.
func (s *Store) RequeueTopic(ctx context.Context, topic string) (int64, error) {
	return s.requeue(ctx, "requeue_topic", topic)
}

// requeue runs the requeue statement of the given name.
func (s *Store) requeue(ctx context.Context, name string, args ...any) (int64, error) {
	res := s.db.WithContext(ctx).Exec(s.sql[name], append(s.drv.nowArgs(), args...)...)
	if res.Error != nil {
		return 0, fmt.Errorf("gormstore: requeue rows of %s: %w", s.table, res.Error)
	}
	return res.RowsAffected, nil
}

// Discard deletes the parked rows with the given IDs: their events are
// never published, and their keys' later rows flow again. It returns how
// many rows it deleted. Only parked rows are affected.
func (s *Store) Discard(ctx context.Context, ids ...int64) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	return s.discard(ctx, "discard", ids)
}

// DiscardIDs is Discard that says which rows it deleted: it returns the
// IDs of the rows it discarded, ascending. A given ID missing from the
// result was not a parked row (no such row, or one pending or delivered).
func (s *Store) DiscardIDs(ctx context.Context, ids ...int64) ([]int64, error) {
	if len(ids) == 0 {
		return []int64{}, nil
	}
	return s.changeParked(ctx, "discard", ids, func(tx *gorm.DB, ids []int64) error {
		return tx.Exec(s.sql["discard"], ids).Error
	})
}

// DiscardAll deletes every parked row; see Discard.
func (s *Store) DiscardAll(ctx context.Context) (int64, error) {
	return s.discard(ctx, "discard_all")
}

// DiscardTopic deletes every parked row of topic; see Discard.
func (s *Store) DiscardTopic(ctx context.Context, topic string) (int64, error) {
	return s.discard(ctx, "discard_topic", topic)
}

// discard runs the discard statement of the given name.
func (s *Store) discard(ctx context.Context, name string, args ...any) (int64, error) {
	res := s.db.WithContext(ctx).Exec(s.sql[name], args...)
	if res.Error != nil {
		return 0, fmt.Errorf("gormstore: discard rows of %s: %w", s.table, res.Error)
	}
	return res.RowsAffected, nil
}

// changeParked runs change on those of ids that are parked rows, in one
// transaction that locks them first, and returns their IDs, ascending.
func (s *Store) changeParked(ctx context.Context, verb string, ids []int64, change func(tx *gorm.DB, ids []int64) error) ([]int64, error) {
	changed := []int64{}
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Raw(s.sql["parked_ids"], ids).Scan(&changed).Error; err != nil {
			return err
		}
		if len(changed) == 0 {
			return nil
		}
		return change(tx, changed)
	})
	if err != nil {
		return nil, fmt.Errorf("gormstore: %s rows of %s: %w", verb, s.table, err)
	}
	slices.Sort(changed)
	return changed, nil
}

// CountDelivered counts the delivered rows (kept with Config.KeepDelivered)
// delivered more than olderThan ago (0: all delivered rows): the rows
// PurgeDeliveredBatch would delete now, by the same clock. It deletes
// nothing.
func (s *Store) CountDelivered(ctx context.Context, olderThan time.Duration) (int64, error) {
	if olderThan < 0 {
		return 0, fmt.Errorf("%w: purge age %v is negative", ErrInvalidConfig, olderThan)
	}
	var n int64
	if err := s.db.WithContext(ctx).Raw(s.sql["count_delivered"], s.drv.cutoffArg(olderThan)).Scan(&n).Error; err != nil {
		return 0, fmt.Errorf("gormstore: count delivered rows of %s: %w", s.table, err)
	}
	return n, nil
}

var _ outbox.DueChecker = (*Store)(nil)

// hasDueWindow bounds the rows whose keys HasDue tries where claims may
// hold keys: when all of them are held, the forwarder waits for the next
// wake-up or poll.
const hasDueWindow = 1000

// HasDue reports whether a row of the given topics (all when empty) is
// due: pending, past its retry time, and not behind a row of its key that
// is parked or waiting for its retry (such a key waits, and a claim would
// find nothing). On PostgreSQL a keyed row counts only if no other claim
// holds its key: it tries the key's lock, which it gives back at once, on
// the rows of a window of the oldest due ones (hasDueWindow), as a claim
// would; like claims, a store whose claims met keys held elsewhere lately
// leaves those keys out of the window. One statement, no transaction.
func (s *Store) HasDue(ctx context.Context, topics []string) (bool, error) {
	found, err := s.drv.hasDue(ctx, topics)
	if err != nil {
		return false, fmt.Errorf("gormstore: check %s for due rows: %w", s.table, err)
	}
	return found, nil
}
