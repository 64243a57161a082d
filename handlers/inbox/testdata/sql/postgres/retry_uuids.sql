-- retry_uuids: postgres, default tables
UPDATE "txoutbox_inbox_failed" SET status = ? WHERE consumer = ? AND message_uuid IN ? AND status = ? RETURNING message_uuid
