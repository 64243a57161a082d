package gormstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// sqliteClaim is a claim on SQLite. SQLite has one writer at a time, so the
// claim does not hold a transaction while the forwarder publishes (that
// would block the application's commits); instead the store lets one claim
// exist at a time, and Finish writes the outcome in one short transaction.
type sqliteClaim struct {
	s    *Store
	rows []outbox.Row
	once sync.Once
}

func (s *Store) claimSQLite(ctx context.Context, p outbox.ClaimParams) (outbox.Claim, error) {
	select {
	case s.lite.claims <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	c := &sqliteClaim{s: s}
	args := []any{sql.Named("now", time.Now().UTC()), sql.Named("limit", p.Limit)}
	q := s.relay.window
	if len(p.Topics) > 0 {
		q = s.relay.windowTopics
		args = append(args, sql.Named("topics", p.Topics))
	}
	rows, err := s.db.WithContext(ctx).Raw(q, args...).Rows()
	if err != nil {
		c.release()
		return nil, fmt.Errorf("gormstore: claim from %s: %w", s.table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var r outbox.Row
		var metadata string
		if err := rows.Scan(&r.ID, &r.UUID, &r.Topic, &r.PartitionKey, &r.Payload, &metadata, &r.Attempts); err != nil {
			c.release()
			return nil, fmt.Errorf("gormstore: claim from %s: %w", s.table, err)
		}
		r.Metadata = []byte(metadata)
		c.rows = append(c.rows, r)
	}
	if err := rows.Err(); err != nil {
		c.release()
		return nil, fmt.Errorf("gormstore: claim from %s: %w", s.table, err)
	}
	return c, nil
}

func (c *sqliteClaim) release() { c.once.Do(func() { <-c.s.lite.claims }) }

func (c *sqliteClaim) Rows() []outbox.Row { return c.rows }

func (c *sqliteClaim) Finish(ctx context.Context, delivered []int64, failures []outbox.Failure) error {
	done := false
	c.once.Do(func() { done = true })
	if !done {
		return errors.New("gormstore: claim already finished or released")
	}
	defer func() { <-c.s.lite.claims }()
	now := time.Now().UTC()
	err := c.s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		for start := 0; start < len(delivered); start += 500 {
			ids := delivered[start:min(start+500, len(delivered))]
			var err error
			if c.s.cfg.KeepDelivered {
				err = tx.Exec(c.s.relay.delivered, now, ids).Error
			} else {
				err = tx.Exec(c.s.relay.delivered, ids).Error
			}
			if err != nil {
				return err
			}
		}
		for _, f := range failures {
			err := tx.Exec(c.s.relay.fail,
				sql.Named("err", cleanError(f.Error)),
				sql.Named("park", f.Park),
				sql.Named("retry_at", now.Add(f.RetryAfter)),
				sql.Named("now", now),
				sql.Named("id", f.ID),
			).Error
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("gormstore: finish claim on %s: %w", c.s.table, err)
	}
	return nil
}

func (c *sqliteClaim) Release(context.Context) error {
	c.release()
	return nil
}
