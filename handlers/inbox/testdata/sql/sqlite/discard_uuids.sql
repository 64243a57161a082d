-- discard_uuids: sqlite, default tables
DELETE FROM "txoutbox_inbox_failed" WHERE consumer = ? AND message_uuid IN ? RETURNING message_uuid
