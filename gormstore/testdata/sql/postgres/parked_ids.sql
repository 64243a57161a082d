-- parked_ids: postgres, default table
SELECT id FROM "txoutbox_outbox" WHERE delivered_at IS NULL AND failed_at IS NOT NULL AND id IN ? ORDER BY id FOR UPDATE
