-- purge: mysql, default table
DELETE FROM `txoutbox_outbox`
WHERE delivered_at IS NOT NULL AND delivered_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND
ORDER BY delivered_at LIMIT ?
