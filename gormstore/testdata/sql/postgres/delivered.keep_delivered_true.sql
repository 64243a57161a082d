-- delivered: postgres, KeepDelivered true, default table, batch 2,000
UPDATE "txoutbox_outbox" SET delivered_at = now() WHERE id = ANY($1)
