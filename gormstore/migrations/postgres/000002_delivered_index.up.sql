-- txoutbox: index on delivered rows for retention (PostgreSQL).
-- Delivered rows exist only with gormstore.Config.KeepDelivered; the
-- retention cleaner (Store.PurgeDeliveredBatch) reads this index to find the
-- oldest of them without scanning the table, also when none is old enough.
-- The index is empty without KeepDelivered, so it costs the relay nothing.
-- On a large table kept before this migration, build it first by hand with
-- CREATE INDEX CONCURRENTLY (same name and definition): this file then does
-- nothing and never blocks writes while the index is built.
CREATE INDEX IF NOT EXISTS "txoutbox_outbox_delivered_idx" ON "txoutbox_outbox" (delivered_at)
    WHERE delivered_at IS NOT NULL;
