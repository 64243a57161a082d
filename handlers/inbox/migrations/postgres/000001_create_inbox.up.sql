-- txoutbox: consumer-side inbox table for PostgreSQL (golang-migrate layout).
-- inbox.Migrate runs this file with the table name replaced when a custom
-- inbox.Config.Table is used.
-- One row per message a consumer has processed; the primary key decides
-- which of two concurrent deliveries of a message runs the handler.
CREATE TABLE IF NOT EXISTS "txoutbox_inbox" (
    consumer     TEXT        NOT NULL,
    message_uuid TEXT        NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer, message_uuid)
);

-- Retention: Inbox.Cleanup deletes the oldest rows in batches.
CREATE INDEX IF NOT EXISTS "txoutbox_inbox_received_at_idx" ON "txoutbox_inbox" (received_at);
