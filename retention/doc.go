// Package retention keeps the outbox and inbox tables small: a [Cleaner]
// deletes delivered outbox rows (kept with gormstore.Config.KeepDelivered)
// and inbox rows older than a retention window, in small batches.
//
//	cleaner, err := retention.New(retention.Config{
//		Outbox:          store, // *gormstore.Store with KeepDelivered
//		Inbox:           in,    // *inbox.Inbox
//		OutboxRetention: 72 * time.Hour,
//		InboxRetention:  14 * 24 * time.Hour,
//	})
//	if err != nil {
//		return err
//	}
//	go cleaner.Run(ctx) // every minute until ctx ends
//
// # No long locks, no table scans
//
// Each batch (Config.BatchSize rows, default 1,000) is one statement that
// commits on its own, so row locks are held for milliseconds and the
// relay and consumers never wait long. Each batch is found through an
// index: the partial index on delivered_at of the outbox (gormstore
// migration 000002) and the received_at index of the inbox, so a batch
// reads only the rows it deletes, also when nothing is due. Claims of the
// forwarder read only partial indexes of undelivered rows, so the rows kept
// for the retention window do not slow the relay (docs/benchmarks.md,
// "Retention").
//
// # Several instances
//
// Run a cleaner on every instance if that is simpler than choosing one. On
// PostgreSQL outbox batches are locked with FOR UPDATE SKIP LOCKED, so
// concurrent cleaners delete disjoint batches without waiting; inbox
// batches of two cleaners may overlap, in which case the second waits for
// the first's short statement and deletes only what is left. Either way no
// cleaner fails because of another, and each deleted row is counted once,
// by the cleaner that deleted it. On SQLite the database serialises the
// deletes.
//
// The admin CLI (cmd/txoutbox purge) runs the same deletes once, by hand.
package retention
