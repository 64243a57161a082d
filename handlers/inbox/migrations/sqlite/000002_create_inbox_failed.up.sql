-- txoutbox: the inbox's failed table for SQLite (golang-migrate layout).
-- See the PostgreSQL file for what the rows mean. failed_at is fixed-width
-- UTC text, like the inbox's received_at.
CREATE TABLE IF NOT EXISTS "txoutbox_inbox_failed" (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer      TEXT    NOT NULL,
    message_uuid  TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    partition_key TEXT    NOT NULL,
    payload       BLOB    NOT NULL,
    metadata      TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    error         TEXT    NOT NULL,
    attempts      INTEGER NOT NULL,
    failed_at     TEXT    NOT NULL,
    UNIQUE (consumer, message_uuid)
);

CREATE INDEX IF NOT EXISTS "txoutbox_inbox_failed_key_idx" ON "txoutbox_inbox_failed" (consumer, partition_key, id);
