-- insert_relayed: postgres, default table
INSERT INTO "txoutbox_outbox" (uuid, topic, partition_key, payload, metadata, attempts, last_error, failed_at)
SELECT r.uuid, r.topic, r.partition_key, r.payload, r.metadata, r.attempts, NULLIF(r.last_error, ''), CASE WHEN r.parked THEN now() END
FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::jsonb[], $6::int4[], $7::text[], $8::bool[])
	WITH ORDINALITY AS r(uuid, topic, partition_key, payload, metadata, attempts, last_error, parked, n)
ORDER BY r.n
ON CONFLICT (uuid) WHERE delivered_at IS NULL DO NOTHING
