-- requeue_all: mysql, default table
UPDATE `txoutbox_outbox` SET failed_at = NULL, attempts = 0, next_attempt_at = UTC_TIMESTAMP(6)
WHERE delivered_at IS NULL AND failed_at IS NOT NULL AND 1 = 1
