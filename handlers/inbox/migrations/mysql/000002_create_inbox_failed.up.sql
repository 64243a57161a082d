-- txoutbox: the inbox's failed table for MySQL 8.0+ and MariaDB 10.6+
-- (golang-migrate layout). See the PostgreSQL file for what the rows mean,
-- and the inbox table's file for the VARBINARY key columns (the key index
-- is 255 + 1024 + 8 bytes) and failed_at's type.
-- metadata is JSON: MySQL checks and stores it in its binary form, MariaDB
-- as LONGTEXT with a json_valid check. error is MEDIUMTEXT: a handler's
-- error longer than TEXT's 64 KiB would fail the batch that parks it.
CREATE TABLE IF NOT EXISTS `txoutbox_inbox_failed` (
    id            BIGINT          NOT NULL AUTO_INCREMENT PRIMARY KEY,
    consumer      VARBINARY(255)  NOT NULL,
    message_uuid  VARBINARY(1024) NOT NULL,
    topic         TEXT            NOT NULL,
    partition_key VARBINARY(1024) NOT NULL,
    payload       LONGBLOB        NOT NULL,
    metadata      JSON            NOT NULL,
    status        VARCHAR(16)     NOT NULL,
    error         MEDIUMTEXT      NOT NULL,
    attempts      INT             NOT NULL,
    failed_at     DATETIME(6)     NOT NULL,
    UNIQUE (consumer, message_uuid),
    -- Finds a key's rows in order, for the per-batch "is this key held" check.
    INDEX `txoutbox_inbox_failed_key_idx` (consumer, partition_key, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
