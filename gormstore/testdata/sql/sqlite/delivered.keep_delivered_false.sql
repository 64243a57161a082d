-- delivered: sqlite, KeepDelivered false, default table, batch 2,000
DELETE FROM "txoutbox_outbox" WHERE id IN ?
