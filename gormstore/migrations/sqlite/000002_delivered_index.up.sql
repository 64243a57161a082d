-- txoutbox: index on delivered rows for retention (SQLite).
-- Delivered rows exist only with gormstore.Config.KeepDelivered; the
-- retention cleaner (Store.PurgeDeliveredBatch) reads this index to find the
-- oldest of them without scanning the table.
CREATE INDEX IF NOT EXISTS "txoutbox_outbox_delivered_idx" ON "txoutbox_outbox" (delivered_at)
    WHERE delivered_at IS NOT NULL;
