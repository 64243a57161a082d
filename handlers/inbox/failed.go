package inbox

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"gorm.io/gorm"
)

// failedSuffix names the failed table after the inbox table.
const failedSuffix = "_failed"

// Status is the state of a row in the inbox's failed table.
type Status string

// The states of a failed-table row.
const (
	// StatusFailed is a message the consumer gave up on: it failed
	// ConsumerConfig.MaxAttempts times, could not be decoded, or carries
	// an event the consumer does not know (UnknownPark). It waits for
	// Retry or Discard.
	StatusFailed Status = "failed"
	// StatusHeld is a message that arrived while an earlier message of its
	// partition key was failed (KeyWait): it waits behind it and is
	// processed, in order, once every row before it is processed or
	// discarded.
	StatusHeld Status = "held"
	// StatusRetry is a failed message marked by Retry: the running
	// consumer processes it again (with the held messages behind it).
	StatusRetry Status = "retry"
)

// FailedMessage is a row of the inbox's failed table: a message a consumer
// acked without processing it, kept with everything needed to process it
// later.
type FailedMessage struct {
	// ID orders the rows; a key's rows are processed in ID order.
	ID int64
	// Consumer is the consumer's name.
	Consumer string
	// UUID is the message UUID.
	UUID string
	// Topic is the topic the message was consumed from.
	Topic string
	// PartitionKey is the message's partition key (metadata
	// "partition_key"), empty when it has none.
	PartitionKey string
	// Payload is the message payload.
	Payload []byte
	// Metadata is the message metadata.
	Metadata message.Metadata
	// Status is failed, held or retry.
	Status Status
	// Error is why the message failed, or which message it is held behind.
	Error string
	// Attempts is how many times the handler failed on it.
	Attempts int
	// FailedAt is when the row was written or last failed.
	FailedAt time.Time
}

// Message returns the stored message, as the consumer's handler gets it.
func (f FailedMessage) Message() *message.Message {
	msg := message.NewMessage(f.UUID, f.Payload)
	for k, v := range f.Metadata {
		msg.Metadata.Set(k, v)
	}
	return msg
}

// failedRow is the scanned form of a row.
type failedRow struct {
	ID           int64
	Consumer     string
	MessageUUID  string
	Topic        string
	PartitionKey string
	Payload      []byte
	Metadata     string
	Status       string
	Error        string
	Attempts     int
	FailedAt     string
}

func (in *Inbox) scanFailed(tx *gorm.DB, query string, args ...any) ([]FailedMessage, error) {
	var rows []failedRow
	if err := tx.Raw(query, args...).Scan(&rows).Error; err != nil {
		return nil, err
	}
	out := make([]FailedMessage, 0, len(rows))
	for _, r := range rows {
		f := FailedMessage{
			ID: r.ID, Consumer: r.Consumer, UUID: r.MessageUUID, Topic: r.Topic,
			PartitionKey: r.PartitionKey, Payload: r.Payload, Status: Status(r.Status),
			Error: r.Error, Attempts: r.Attempts, FailedAt: parseTime(r.FailedAt),
		}
		if err := json.Unmarshal([]byte(r.Metadata), &f.Metadata); err != nil {
			return nil, fmt.Errorf("inbox: failed message %d of %s: metadata: %w", r.ID, r.Consumer, err)
		}
		out = append(out, f)
	}
	return out, nil
}

// parseTime reads a time column scanned into a string. Every database's
// text is RFC 3339: SQLite's stored text (sqliteTimeFormat), PostgreSQL's
// timestamptz as database/sql formats it, and MySQL's DATETIME as
// failed_columns formats it (sql/mysql.sql).
func parseTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}

// FailedTable returns the name of the inbox's failed table: the inbox
// table's name followed by "_failed", in the same schema.
func (in *Inbox) FailedTable() string { return in.failed.String() }

// ListFailed returns up to limit rows of the failed table, oldest first,
// starting after the row with ID afterID (0 for the first page). An empty
// consumer lists every consumer's rows.
func (in *Inbox) ListFailed(ctx context.Context, consumer string, afterID int64, limit int) ([]FailedMessage, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("%w: ListFailed limit %d must be positive", ErrInvalidConfig, limit)
	}
	q, args := in.sql.listFailed, []any{afterID, limit}
	if consumer != "" {
		q, args = in.sql.listFailedOf, []any{afterID, consumer, limit}
	}
	rows, err := in.scanFailed(in.db.WithContext(ctx), q, args...)
	if err != nil {
		return nil, fmt.Errorf("inbox: list %s: %w", in.failed, err)
	}
	return rows, nil
}

// FailedCounts returns, per consumer, how many rows of the failed table
// are in each status.
func (in *Inbox) FailedCounts(ctx context.Context) (map[string]map[Status]int64, error) {
	var rows []struct {
		Consumer string
		Status   string
		N        int64
	}
	err := in.db.WithContext(ctx).Raw(in.sql.failedCounts).Scan(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("inbox: count %s: %w", in.failed, err)
	}
	out := map[string]map[Status]int64{}
	for _, r := range rows {
		if out[r.Consumer] == nil {
			out[r.Consumer] = map[Status]int64{}
		}
		out[r.Consumer][Status(r.Status)] = r.N
	}
	return out, nil
}

// Retry marks consumer's failed messages with the given UUIDs for
// processing again and returns how many it marked. The running consumer
// (ConsumerConfig.Name == consumer) picks them up within
// ConsumerConfig.RedrivePoll and runs its handler on the stored message;
// under KeyWait the held messages behind one follow it, in order. A message
// that fails again is failed again, with one more attempt. Only failed rows
// are affected.
func (in *Inbox) Retry(ctx context.Context, consumer string, uuids ...string) (int64, error) {
	if consumer == "" {
		return 0, fmt.Errorf("%w: Retry needs a consumer name", ErrNoConsumer)
	}
	if len(uuids) == 0 {
		return 0, nil
	}
	return in.setStatus(ctx, in.sql.retry, consumer, uuids, StatusFailed)
}

// RetryUUIDs is Retry that says which messages it marked: it returns the
// UUIDs it marked, sorted. A given UUID missing from the result was not a
// failed message of consumer (no such row, another consumer's, or one held
// or already marked).
func (in *Inbox) RetryUUIDs(ctx context.Context, consumer string, uuids ...string) ([]string, error) {
	if consumer == "" {
		return nil, fmt.Errorf("%w: Retry needs a consumer name", ErrNoConsumer)
	}
	if len(uuids) == 0 {
		return []string{}, nil
	}
	return in.changedUUIDs(ctx, "retry", in.sql.retryUUIDs, []any{StatusRetry, consumer, uuids, StatusFailed}, func(tx *gorm.DB, locked []string) error {
		return tx.Exec(in.sql.retry, StatusRetry, consumer, locked, StatusFailed).Error
	})
}

// RetryAll marks every failed message of consumer (every consumer's when
// consumer is empty) for processing again; see Retry.
func (in *Inbox) RetryAll(ctx context.Context, consumer string) (int64, error) {
	if consumer == "" {
		return in.setStatus(ctx, in.sql.retryAll, StatusFailed)
	}
	return in.setStatus(ctx, in.sql.retryAllOf, consumer, StatusFailed)
}

// setStatus runs query, a retry statement, with StatusRetry and args.
func (in *Inbox) setStatus(ctx context.Context, query string, args ...any) (int64, error) {
	res := in.db.WithContext(ctx).Exec(query, append([]any{StatusRetry}, args...)...)
	if res.Error != nil {
		return 0, fmt.Errorf("inbox: retry rows of %s: %w", in.failed, res.Error)
	}
	return res.RowsAffected, nil
}

// Discard deletes consumer's rows with the given UUIDs from the failed
// table and returns how many it deleted: those messages are never
// processed (their inbox rows stay, so a redelivery is acked as a
// duplicate). Under KeyWait the held messages behind a discarded one are
// then processed by the running consumer, in order.
func (in *Inbox) Discard(ctx context.Context, consumer string, uuids ...string) (int64, error) {
	if consumer == "" {
		return 0, fmt.Errorf("%w: Discard needs a consumer name", ErrNoConsumer)
	}
	if len(uuids) == 0 {
		return 0, nil
	}
	res := in.db.WithContext(ctx).Exec(in.sql.discard, consumer, uuids)
	if res.Error != nil {
		return 0, fmt.Errorf("inbox: discard rows of %s: %w", in.failed, res.Error)
	}
	return res.RowsAffected, nil
}

// DiscardUUIDs is Discard that says which messages it deleted: it returns
// the UUIDs it deleted, sorted. A given UUID missing from the result was
// not in the failed table for consumer.
func (in *Inbox) DiscardUUIDs(ctx context.Context, consumer string, uuids ...string) ([]string, error) {
	if consumer == "" {
		return nil, fmt.Errorf("%w: Discard needs a consumer name", ErrNoConsumer)
	}
	if len(uuids) == 0 {
		return []string{}, nil
	}
	return in.changedUUIDs(ctx, "discard", in.sql.discardUUIDs, []any{consumer, uuids}, func(tx *gorm.DB, locked []string) error {
		return tx.Exec(in.sql.discard, consumer, locked).Error
	})
}

// changedUUIDs runs query, retry_uuids or discard_uuids, with args and
// returns the UUIDs of the rows it changed, sorted (neither RETURNING nor
// a select promises an order). change is the same change of the given
// rows, with the plain statement (retry, discard): see
// driver.changedUUIDs.
func (in *Inbox) changedUUIDs(ctx context.Context, verb, query string, args []any, change func(tx *gorm.DB, uuids []string) error) ([]string, error) {
	uuids, err := in.drv.changedUUIDs(in.db.WithContext(ctx), query, args, change)
	if err != nil {
		return nil, fmt.Errorf("inbox: %s rows of %s: %w", verb, in.failed, err)
	}
	if uuids == nil {
		uuids = []string{}
	}
	slices.Sort(uuids)
	return uuids, nil
}
