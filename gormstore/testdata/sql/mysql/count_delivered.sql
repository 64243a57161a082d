-- count_delivered: mysql, default table
SELECT count(*) FROM `txoutbox_outbox` WHERE delivered_at IS NOT NULL AND delivered_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND
