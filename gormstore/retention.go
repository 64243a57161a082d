package gormstore

import (
	"context"
	"fmt"
	"time"
)

// PurgeDeliveredBatch deletes one batch of delivered rows (kept with
// Config.KeepDelivered): at most limit rows delivered more than olderThan
// ago (0: all delivered rows), oldest delivery first, in one short
// statement. It returns how many rows it deleted; fewer than limit means
// no more rows were due, or that another cleaner holds the rest. Call it in
// a loop, or use package retention, which does.
//
// Age is measured with the clock that stamped delivered_at: the database's
// on PostgreSQL, the local one on SQLite. The batch is found through the
// index on delivered_at (partial on PostgreSQL and SQLite), so a batch
// reads only the rows it deletes, also when no row is due. On PostgreSQL
// and MySQL the batch is locked with FOR UPDATE SKIP LOCKED: several
// cleaners delete disjoint batches at once, never wait for each other,
// and never count a row twice. Pending and parked rows are never touched.
func (s *Store) PurgeDeliveredBatch(ctx context.Context, olderThan time.Duration, limit int) (int64, error) {
	if olderThan < 0 {
		return 0, fmt.Errorf("%w: purge age %v is negative", ErrInvalidConfig, olderThan)
	}
	if limit <= 0 {
		return 0, fmt.Errorf("%w: purge batch %d must be positive", ErrInvalidConfig, limit)
	}
	n, err := s.drv.purge(ctx, olderThan, limit)
	if err != nil {
		return 0, fmt.Errorf("gormstore: purge delivered rows of %s: %w", s.table, err)
	}
	return n, nil
}
