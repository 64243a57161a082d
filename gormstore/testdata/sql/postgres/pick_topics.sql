-- pick_topics: postgres, default table
WITH blocked AS MATERIALIZED (
	SELECT DISTINCT partition_key FROM "txoutbox_outbox" WHERE delivered_at IS NULL AND partition_key <> '' AND (attempts > 0 OR failed_at IS NOT NULL)
	  AND (failed_at IS NOT NULL OR next_attempt_at > now())
), w AS MATERIALIZED (
	SELECT x.id, x.partition_key FROM (SELECT DISTINCT unnest($3::text[]) AS topic) AS tp
	CROSS JOIN LATERAL (
		SELECT id, partition_key FROM "txoutbox_outbox"
		WHERE topic >= tp.topic AND topic <= tp.topic AND delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
	  AND partition_key NOT IN (SELECT partition_key FROM blocked)
	  AND partition_key NOT IN (SELECT unnest($2::text[]))
		ORDER BY topic, id LIMIT 3000
	) AS x
	ORDER BY x.id LIMIT 3000
), g AS MATERIALIZED (
	SELECT partition_key, first, sum(n) OVER (ORDER BY first) - n AS before FROM (
		SELECT partition_key, min(id) AS first, count(*) AS n FROM w WHERE partition_key <> '' GROUP BY partition_key
		UNION ALL
		SELECT '', id, 1 FROM w WHERE partition_key = ''
	) x
), k AS MATERIALIZED (
	SELECT partition_key FROM (SELECT partition_key, before FROM g WHERE partition_key <> '' ORDER BY first OFFSET 0) d
	WHERE CASE WHEN before < 2000 THEN pg_try_advisory_xact_lock($1, hashtext(partition_key)) ELSE false END
), u AS MATERIALIZED (
	SELECT id FROM "txoutbox_outbox"
	WHERE id = ANY(ARRAY(SELECT first FROM g WHERE partition_key = '' AND before < 2000))
	  AND delivered_at IS NULL AND failed_at IS NULL
	FOR UPDATE SKIP LOCKED
)
SELECT set_config('txoutbox.claim_ids', coalesce(array_agg(id ORDER BY id)::text, '{}'), true) IS NOT NULL,
	(SELECT count(*) FROM g WHERE partition_key <> '' AND before < 2000) - (SELECT count(*) FROM k)
FROM (
	SELECT id FROM (SELECT w.id FROM w JOIN k USING (partition_key) UNION ALL SELECT id FROM u) p
	ORDER BY id LIMIT 2000
) c
