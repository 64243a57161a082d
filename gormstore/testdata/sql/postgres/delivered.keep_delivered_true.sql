-- delivered: postgres, KeepDelivered true, default table
UPDATE "txoutbox_outbox" SET delivered_at = now() WHERE id = ANY($1)
