-- delivered: postgres, KeepDelivered false, default table
DELETE FROM "txoutbox_outbox" WHERE id = ANY($1)
