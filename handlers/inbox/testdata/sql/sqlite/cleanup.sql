-- cleanup: sqlite, default tables
DELETE FROM "txoutbox_inbox" WHERE rowid IN (SELECT rowid FROM "txoutbox_inbox" WHERE received_at < ? LIMIT ?) AND received_at < ?
