-- cleanup: mysql, default tables
DELETE FROM `txoutbox_inbox` WHERE received_at < @cutoff ORDER BY received_at LIMIT @batch
