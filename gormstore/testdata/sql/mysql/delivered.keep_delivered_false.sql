-- delivered: mysql, KeepDelivered false, default table
DELETE FROM `txoutbox_outbox` WHERE id IN ({ids})
