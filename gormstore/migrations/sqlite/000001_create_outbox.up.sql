-- txoutbox: native outbox table for SQLite (golang-migrate layout).
-- gormstore.Migrate runs this file with the table name replaced when a
-- custom gormstore.Config.Table is used. Times are stored as UTC text.
CREATE TABLE IF NOT EXISTS "txoutbox_outbox" (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid            TEXT      NOT NULL,
    topic           TEXT      NOT NULL,
    partition_key   TEXT      NOT NULL DEFAULT '',
    payload         BLOB      NOT NULL,
    metadata        TEXT      NOT NULL DEFAULT '{}',
    created_at      TIMESTAMP NOT NULL,
    attempts        INTEGER   NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    last_error      TEXT,
    delivered_at    TIMESTAMP,
    failed_at       TIMESTAMP
);

-- A message UUID is stored once among the rows not yet delivered.
CREATE UNIQUE INDEX IF NOT EXISTS "txoutbox_outbox_uuid_key" ON "txoutbox_outbox" (uuid)
    WHERE delivered_at IS NULL;

CREATE INDEX IF NOT EXISTS "txoutbox_outbox_pending_idx" ON "txoutbox_outbox" (id)
    WHERE delivered_at IS NULL AND failed_at IS NULL;

CREATE INDEX IF NOT EXISTS "txoutbox_outbox_key_idx" ON "txoutbox_outbox" (partition_key, id)
    WHERE delivered_at IS NULL;

CREATE INDEX IF NOT EXISTS "txoutbox_outbox_blocked_idx" ON "txoutbox_outbox" (partition_key)
    WHERE delivered_at IS NULL AND (attempts > 0 OR failed_at IS NOT NULL);
