-- undelivered_keys_all: postgres, default table
SELECT partition_key FROM "txoutbox_outbox"
WHERE delivered_at IS NULL AND failed_at IS NULL AND partition_key <> ''
UNION
SELECT partition_key FROM "txoutbox_outbox"
WHERE delivered_at IS NULL AND failed_at IS NOT NULL AND partition_key <> ''
