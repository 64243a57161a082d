-- txoutbox: native outbox table for PostgreSQL (golang-migrate layout).
-- gormstore.Migrate runs this file with the table name replaced when a
-- custom gormstore.Config.Table is used.
CREATE TABLE IF NOT EXISTS "txoutbox_outbox" (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid            TEXT        NOT NULL,
    topic           TEXT        NOT NULL,
    partition_key   TEXT        NOT NULL DEFAULT '',
    payload         BYTEA       NOT NULL,
    metadata        JSONB       NOT NULL DEFAULT '{}',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    delivered_at    TIMESTAMPTZ,
    failed_at       TIMESTAMPTZ
);

-- A message UUID is stored once among the rows not yet delivered. Delivered
-- rows kept for retention leave the index, so marking a row delivered does
-- not touch a random leaf among millions of kept rows.
CREATE UNIQUE INDEX IF NOT EXISTS "txoutbox_outbox_uuid_key" ON "txoutbox_outbox" (uuid)
    WHERE delivered_at IS NULL;

-- Only undelivered rows are indexed for claims, so claims stay fast when
-- millions of delivered rows are kept for a retention window.
CREATE INDEX IF NOT EXISTS "txoutbox_outbox_pending_idx" ON "txoutbox_outbox" (id)
    WHERE delivered_at IS NULL AND failed_at IS NULL;

-- The head of each partition key among undelivered rows (delivered or parked).
CREATE INDEX IF NOT EXISTS "txoutbox_outbox_key_idx" ON "txoutbox_outbox" (partition_key, id)
    WHERE delivered_at IS NULL;

-- Partition keys that must wait: rows in retry backoff or parked. Small by
-- nature; a claim reads it to skip blocked keys without scanning their rows.
CREATE INDEX IF NOT EXISTS "txoutbox_outbox_blocked_idx" ON "txoutbox_outbox" (partition_key)
    WHERE delivered_at IS NULL AND (attempts > 0 OR failed_at IS NOT NULL);
