-- cleanup: postgres, default tables
DELETE FROM "txoutbox_inbox" WHERE ctid = ANY(ARRAY(SELECT ctid FROM "txoutbox_inbox" WHERE received_at < ? LIMIT ?)) AND received_at < ?
