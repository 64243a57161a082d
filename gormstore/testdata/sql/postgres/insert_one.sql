-- insert_one: postgres, default table
INSERT INTO "txoutbox_outbox" (uuid, topic, partition_key, payload, metadata)
VALUES ($1::text, $2::text, $3::text, $4::bytea, $5::jsonb)
