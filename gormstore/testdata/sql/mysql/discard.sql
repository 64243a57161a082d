-- discard: mysql, default table
DELETE FROM `txoutbox_outbox` WHERE delivered_at IS NULL AND failed_at IS NOT NULL AND id IN ?
