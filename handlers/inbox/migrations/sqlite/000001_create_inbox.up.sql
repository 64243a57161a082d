-- txoutbox: consumer-side inbox table for SQLite (golang-migrate layout).
-- inbox.Migrate runs this file with the table name replaced when a custom
-- inbox.Config.Table is used. received_at is stored as fixed-width UTC text
-- (2006-01-02T15:04:05.000000000Z), so it sorts as it compares.
CREATE TABLE IF NOT EXISTS "txoutbox_inbox" (
    consumer     TEXT NOT NULL,
    message_uuid TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    PRIMARY KEY (consumer, message_uuid)
);

CREATE INDEX IF NOT EXISTS "txoutbox_inbox_received_at_idx" ON "txoutbox_inbox" (received_at);
