package gormstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/txoutbox/txoutbox/outbox"
)

// sqliteTimeLayouts are the layouts SQLite time text is parsed with.
var sqliteTimeLayouts = []string{
	"2006-01-02 15:04:05.999999999-07:00",
	"2006-01-02 15:04:05.999999999",
	time.RFC3339Nano,
}

// Stats reports pending and parked rows, overall and per topic, in one
// query. On PostgreSQL the age of the oldest pending row is computed by the
// database clock, which timestamped the rows; on SQLite by the local clock.
func (s *Store) Stats(ctx context.Context) (outbox.Stats, error) {
	type topicRow struct {
		Topic     string
		Pending   int64
		Failed    int64
		AgeSecs   sql.NullFloat64 // PostgreSQL
		OldestStr sql.NullString  // SQLite
	}
	var q string
	if s.dialect == postgres {
		q = `SELECT topic,
	count(*) FILTER (WHERE failed_at IS NULL) AS pending,
	count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed,
	EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE failed_at IS NULL))::float8 AS age_secs
FROM ` + s.quoted + ` WHERE delivered_at IS NULL GROUP BY topic`
	} else {
		q = `SELECT topic,
	sum(failed_at IS NULL) AS pending,
	sum(failed_at IS NOT NULL) AS failed,
	min(CASE WHEN failed_at IS NULL THEN created_at END) AS oldest_str
FROM ` + s.quoted + ` WHERE delivered_at IS NULL GROUP BY topic`
	}
	var rows []topicRow
	if err := s.db.WithContext(ctx).Raw(q).Scan(&rows).Error; err != nil {
		return outbox.Stats{}, fmt.Errorf("gormstore: stats of %s: %w", s.table, err)
	}
	st := outbox.Stats{Topics: make(map[string]outbox.TopicStats, len(rows))}
	for _, r := range rows {
		ts := outbox.TopicStats{Pending: r.Pending, Failed: r.Failed}
		if r.AgeSecs.Valid {
			ts.OldestPendingAge = max(time.Duration(r.AgeSecs.Float64*float64(time.Second)), 0)
		}
		if r.OldestStr.Valid {
			if t, ok := parseTime(r.OldestStr.String); ok {
				ts.OldestPendingAge = max(time.Since(t), 0)
			}
		}
		st.Topics[r.Topic] = ts
		st.Pending += ts.Pending
		st.Failed += ts.Failed
		st.OldestPendingAge = max(st.OldestPendingAge, ts.OldestPendingAge)
	}
	return st, nil
}

func parseTime(s string) (time.Time, bool) {
	for _, l := range sqliteTimeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
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
	err := s.db.WithContext(ctx).Raw(`SELECT id, uuid, topic, partition_key, attempts, coalesce(last_error, '') AS last_error, created_at, failed_at
FROM `+s.quoted+` WHERE delivered_at IS NULL AND failed_at IS NOT NULL AND id > ? ORDER BY id LIMIT ?`, afterID, limit).Scan(&rows).Error
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
	err := s.db.WithContext(ctx).Raw(`SELECT id, uuid, topic, partition_key, attempts, coalesce(last_error, '') AS last_error, created_at, failed_at, metadata, payload
FROM `+s.quoted+` WHERE `+parkedRow+` AND id = ?`, id).Scan(&rows).Error
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
	return s.requeue(ctx, "id IN ?", ids)
}

// RequeueIDs is Requeue that says which rows it changed: it returns the
// IDs of the rows it requeued, ascending. A given ID missing from the
// result was not a parked row (no such row, or one pending or delivered).
func (s *Store) RequeueIDs(ctx context.Context, ids ...int64) ([]int64, error) {
	if len(ids) == 0 {
		return []int64{}, nil
	}
	nowSQL, nowArgs := s.nowSQL()
	return s.changedIDs(ctx, "requeue", `UPDATE `+s.quoted+` SET failed_at = NULL, attempts = 0, next_attempt_at = `+nowSQL+`
WHERE `+parkedRow+` AND id IN ? RETURNING id`, append(nowArgs, ids)...)
}

// RequeueAll makes every parked row pending again.
func (s *Store) RequeueAll(ctx context.Context) (int64, error) {
	return s.requeue(ctx, "1 = 1")
}

// RequeueTopic makes every parked row of topic pending again; see Requeue.
func (s *Store) RequeueTopic(ctx context.Context, topic string) (int64, error) {
	return s.requeue(ctx, "topic = ?", topic)
}

// parkedRow is the condition of a parked row.
const parkedRow = "delivered_at IS NULL AND failed_at IS NOT NULL"

func (s *Store) requeue(ctx context.Context, where string, args ...any) (int64, error) {
	nowSQL, nowArgs := s.nowSQL()
	res := s.db.WithContext(ctx).Exec(`UPDATE `+s.quoted+` SET failed_at = NULL, attempts = 0, next_attempt_at = `+nowSQL+`
WHERE `+parkedRow+` AND `+where, append(nowArgs, args...)...)
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
	return s.discard(ctx, "id IN ?", ids)
}

// DiscardIDs is Discard that says which rows it deleted: it returns the
// IDs of the rows it discarded, ascending. A given ID missing from the
// result was not a parked row (no such row, or one pending or delivered).
func (s *Store) DiscardIDs(ctx context.Context, ids ...int64) ([]int64, error) {
	if len(ids) == 0 {
		return []int64{}, nil
	}
	return s.changedIDs(ctx, "discard", `DELETE FROM `+s.quoted+` WHERE `+parkedRow+` AND id IN ? RETURNING id`, ids)
}

// DiscardAll deletes every parked row; see Discard.
func (s *Store) DiscardAll(ctx context.Context) (int64, error) {
	return s.discard(ctx, "1 = 1")
}

// DiscardTopic deletes every parked row of topic; see Discard.
func (s *Store) DiscardTopic(ctx context.Context, topic string) (int64, error) {
	return s.discard(ctx, "topic = ?", topic)
}

func (s *Store) discard(ctx context.Context, where string, args ...any) (int64, error) {
	res := s.db.WithContext(ctx).Exec(`DELETE FROM `+s.quoted+` WHERE `+parkedRow+` AND `+where, args...)
	if res.Error != nil {
		return 0, fmt.Errorf("gormstore: discard rows of %s: %w", s.table, res.Error)
	}
	return res.RowsAffected, nil
}

// changedIDs runs a statement ending in RETURNING id and returns the IDs,
// ascending (RETURNING promises no order).
func (s *Store) changedIDs(ctx context.Context, verb, query string, args ...any) ([]int64, error) {
	ids := []int64{}
	if err := s.db.WithContext(ctx).Raw(query, args...).Scan(&ids).Error; err != nil {
		return nil, fmt.Errorf("gormstore: %s rows of %s: %w", verb, s.table, err)
	}
	slices.Sort(ids)
	return ids, nil
}

// CountDelivered counts the delivered rows (kept with Config.KeepDelivered)
// delivered more than olderThan ago (0: all delivered rows): the rows
// PurgeDeliveredBatch would delete now, by the same clock. It deletes
// nothing.
func (s *Store) CountDelivered(ctx context.Context, olderThan time.Duration) (int64, error) {
	if olderThan < 0 {
		return 0, fmt.Errorf("%w: purge age %v is negative", ErrInvalidConfig, olderThan)
	}
	q := `SELECT count(*) FROM ` + s.quoted + ` WHERE delivered_at IS NOT NULL AND delivered_at < `
	var args []any
	if s.dialect == postgres {
		q += `now() - ?::bigint * interval '1 microsecond'`
		args = []any{olderThan.Microseconds()}
	} else {
		q += `?`
		args = []any{time.Now().UTC().Add(-olderThan)}
	}
	var n int64
	if err := s.db.WithContext(ctx).Raw(q, args...).Scan(&n).Error; err != nil {
		return 0, fmt.Errorf("gormstore: count delivered rows of %s: %w", s.table, err)
	}
	return n, nil
}

// nowSQL returns the SQL for the current time and its arguments: the
// database clock on PostgreSQL, the local clock on SQLite.
func (s *Store) nowSQL() (string, []any) {
	if s.dialect == postgres {
		return "now()", nil
	}
	return "?", []any{time.Now().UTC()}
}

var _ outbox.DueChecker = (*Store)(nil)

// hasDueWindow bounds the rows whose keys HasDue tries on PostgreSQL: when
// all of them are held, the forwarder waits for the next wake-up or poll.
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
	nowSQL, nowArgs := s.nowSQL()
	due := `delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= ` + nowSQL + `
	  AND partition_key NOT IN (SELECT partition_key FROM ` + s.quoted + ` WHERE ` + blockedRow(nowSQL) + `)`
	dueArgs := append(slices.Clone(nowArgs), nowArgs...)
	var q string
	var args []any
	if s.dialect == postgres {
		lockspace, err := s.lockspace(ctx)
		if err != nil {
			return false, fmt.Errorf("gormstore: check %s for due rows: %w", s.table, err)
		}
		window := strconv.Itoa(hasDueWindow)
		if s.contended() {
			// As claims do: rows of keys other forwarders hold do not
			// fill the window.
			q = `WITH ` + heldKeys("?") + ` `
			due += skipHeld
			args = append(args, lockspace)
		}
		rows := `SELECT id, partition_key FROM ` + s.quoted + ` WHERE ` + due + ` ORDER BY id LIMIT ` + window
		if len(topics) > 0 {
			values := strings.TrimSuffix(strings.Repeat("(?::text),", len(topics)), ",")
			rows = topicWindow(s.quoted, `(SELECT DISTINCT topic FROM (VALUES `+values+`) AS v(topic))`, due, window)
			for _, t := range topics {
				args = append(args, t)
			}
		}
		q += `SELECT EXISTS (SELECT 1 FROM (` + rows + `) w
	WHERE CASE WHEN partition_key = '' THEN true ELSE pg_try_advisory_xact_lock(?, hashtext(partition_key)) END)`
		args = append(append(args, dueArgs...), lockspace)
	} else {
		q = `SELECT EXISTS (SELECT 1 FROM ` + s.quoted + ` WHERE ` + due
		args = dueArgs
		if len(topics) > 0 {
			q += ` AND topic IN ?`
			args = append(args, topics)
		}
		q += `)`
	}
	var found bool
	if err := s.db.WithContext(ctx).Raw(q, args...).Scan(&found).Error; err != nil {
		return false, fmt.Errorf("gormstore: check %s for due rows: %w", s.table, err)
	}
	return found, nil
}
