-- txoutbox: native outbox table for MySQL 8.0+ and MariaDB 10.6+
-- (golang-migrate layout). gormstore.Migrate runs this file with the table
-- name replaced when a custom gormstore.Config.Table is used. Times are
-- UTC, written by the database clock (UTC_TIMESTAMP), whatever the
-- session's time_zone; DATETIME, unlike TIMESTAMP, does not end in 2038.
--
-- UUIDs, topics and keys are VARBINARY: compared byte for byte on both
-- databases (MariaDB's utf8mb4_bin ignores trailing spaces: 'a' = 'a ').
--
-- MySQL has no partial indexes. The indexes below lead with delivered_at
-- (and failed_at), so the rows a claim reads, those not delivered, form
-- their own range of each index however many delivered rows are kept; the
-- generated columns are NULL outside the rows their index serves. Every
-- index is declared in CREATE TABLE: MySQL 8 has no CREATE INDEX IF NOT
-- EXISTS, and this file must be safe to run again.
CREATE TABLE IF NOT EXISTS `txoutbox_outbox` (
    id              BIGINT       NOT NULL AUTO_INCREMENT,
    uuid            VARBINARY(255) NOT NULL,
    topic           VARBINARY(1024) NOT NULL,
    partition_key   VARBINARY(1024) NOT NULL DEFAULT '',
    payload         LONGBLOB     NOT NULL,
    metadata        JSON         NOT NULL DEFAULT ('{}'),
    created_at      DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    attempts        INT          NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    last_error      TEXT         NULL,
    delivered_at    DATETIME(6)  NULL,
    failed_at       DATETIME(6)  NULL,
    -- The UUID of a row not yet delivered: a message UUID is stored once
    -- among those (NULLs do not collide in a unique index).
    live_uuid       VARBINARY(255) AS (CASE WHEN delivered_at IS NULL THEN uuid END) STORED,
    -- The key of a row that may stop its key: not delivered, and retried
    -- or parked. Claims read the keys that wait from its index.
    blocked_key     VARBINARY(1024) AS (CASE WHEN delivered_at IS NULL AND partition_key <> ''
                                      AND (attempts > 0 OR failed_at IS NOT NULL) THEN partition_key END) STORED,
    PRIMARY KEY (id),
    UNIQUE KEY `txoutbox_outbox_uuid_key` (live_uuid),
    -- Claims: the pending rows in ID order, with what a claim's window
    -- reads of them (no row lookup); retention: delivered rows by
    -- delivery time.
    KEY `txoutbox_outbox_pending_idx` (delivered_at, failed_at, id, next_attempt_at, partition_key),
    KEY `txoutbox_outbox_blocked_idx` (blocked_key),
    -- Claims of some topics.
    KEY `txoutbox_outbox_topic_idx` (delivered_at, failed_at, topic, id, next_attempt_at, partition_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
