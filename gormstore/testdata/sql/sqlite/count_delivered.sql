-- count_delivered: sqlite, default table
SELECT count(*) FROM "txoutbox_outbox" WHERE delivered_at IS NOT NULL AND delivered_at < ?
