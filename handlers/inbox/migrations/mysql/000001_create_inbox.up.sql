-- txoutbox: consumer-side inbox table for MySQL 8.0+ and MariaDB 10.6+
-- (golang-migrate layout). inbox.Migrate runs this file with the table name
-- replaced when a custom inbox.Config.Table is used. See the PostgreSQL
-- file for what the rows mean.
--
-- The key columns are VARBINARY, so that consumers and UUIDs compare byte
-- for byte, as on the other databases. A VARCHAR in utf8mb4_bin would not:
-- it is a PAD SPACE collation on both databases ('a' = 'a '), and the
-- NO PAD ones are named differently on each (utf8mb4_0900_bin on MySQL,
-- utf8mb4_nopad_bin on MariaDB). Lengths are in bytes: the primary key is
-- 255 + 1024 bytes, within InnoDB's 3072-byte key limit; a longer value is
-- an error (strict mode, the default of both databases). The other text
-- columns are utf8mb4, in the table's binary collation.
-- received_at is DATETIME(6), written as UTC text by the inbox: it does not
-- depend on the session's time_zone, as TIMESTAMP does, and does not end
-- in 2038.
-- record_token marks the rows one insert wrote, so that the inbox reads
-- back which messages of a batch were new (MySQL has no INSERT ...
-- RETURNING); 0 is the default of rows written otherwise.
-- MySQL 8 has no CREATE INDEX IF NOT EXISTS: the index is declared in the
-- table, so the file can run again.
CREATE TABLE IF NOT EXISTS `txoutbox_inbox` (
    consumer     VARBINARY(255)  NOT NULL,
    message_uuid VARBINARY(1024) NOT NULL,
    received_at  DATETIME(6)     NOT NULL,
    record_token BIGINT          NOT NULL DEFAULT 0,
    PRIMARY KEY (consumer, message_uuid),
    -- Retention: Inbox.Cleanup deletes the oldest rows in batches.
    INDEX `txoutbox_inbox_received_at_idx` (received_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
