-- undelivered_keys: postgres, default table
SELECT partition_key FROM "txoutbox_outbox"
WHERE delivered_at IS NULL AND failed_at IS NULL AND partition_key = ANY($1)
UNION
SELECT partition_key FROM "txoutbox_outbox"
WHERE delivered_at IS NULL AND failed_at IS NOT NULL AND partition_key = ANY($1)
