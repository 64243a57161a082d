-- cleanup: sqlite, default tables
DELETE FROM "txoutbox_inbox" WHERE rowid IN (SELECT rowid FROM "txoutbox_inbox" WHERE received_at < @cutoff LIMIT @batch) AND received_at < @cutoff
