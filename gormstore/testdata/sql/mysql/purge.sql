-- purge: mysql, default table
DELETE FROM `txoutbox_outbox` WHERE id IN ?
