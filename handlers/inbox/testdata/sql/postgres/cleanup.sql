-- cleanup: postgres, default tables
DELETE FROM "txoutbox_inbox" WHERE ctid = ANY(ARRAY(SELECT ctid FROM "txoutbox_inbox" WHERE received_at < @cutoff LIMIT @batch)) AND received_at < @cutoff
