-- delivered: postgres, KeepDelivered false, default table, batch 2,000
DELETE FROM "txoutbox_outbox" WHERE id = ANY($1)
