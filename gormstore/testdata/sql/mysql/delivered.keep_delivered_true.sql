-- delivered: mysql, KeepDelivered true, default table
UPDATE `txoutbox_outbox` SET delivered_at = UTC_TIMESTAMP(6) WHERE id IN ({ids})
