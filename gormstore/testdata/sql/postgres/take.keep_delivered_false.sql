-- take: postgres, KeepDelivered false, default table
WITH stop AS MATERIALIZED (
	SELECT partition_key, min(id) AS at FROM "txoutbox_outbox" WHERE delivered_at IS NULL AND partition_key <> '' AND (attempts > 0 OR failed_at IS NOT NULL)
	  AND (failed_at IS NOT NULL OR next_attempt_at > now())
	GROUP BY partition_key
)
DELETE FROM "txoutbox_outbox" AS o
WHERE o.id = ANY(current_setting('txoutbox.claim_ids')::bigint[])
  AND CASE WHEN o.delivered_at IS NULL THEN true ELSE false END
  AND NOT EXISTS (SELECT 1 FROM stop WHERE stop.partition_key = o.partition_key AND stop.at <= o.id)
RETURNING id, uuid, topic, partition_key, payload, metadata, attempts
