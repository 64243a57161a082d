-- delivered: sqlite, KeepDelivered true, default table
UPDATE "txoutbox_outbox" SET delivered_at = ? WHERE id IN ?
