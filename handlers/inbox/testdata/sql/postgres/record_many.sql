-- record_many: postgres, default tables
INSERT INTO "txoutbox_inbox" (consumer, message_uuid, received_at) VALUES (?, ?, ?), (?, ?, ?) ON CONFLICT DO NOTHING RETURNING message_uuid
