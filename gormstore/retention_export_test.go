package gormstore

import "time"

// PurgeDeliveredSQL exposes PurgeDeliveredBatch's statement to the tests,
// which check its query plan.
func (s *Store) PurgeDeliveredSQL(olderThan time.Duration, limit int) (string, []any) {
	return s.sql["purge"], []any{s.drv.cutoffArg(olderThan), limit}
}
