-- delivered: sqlite, KeepDelivered true, default table, batch 2,000
UPDATE "txoutbox_outbox" SET delivered_at = ? WHERE id IN ?
