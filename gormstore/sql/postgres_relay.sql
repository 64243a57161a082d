{{/*
Relay statements on PostgreSQL, rendered once per store by newRelaySQL.
Data: .T the quoted table, .Keep KeepDelivered, .Free (pick) leave out
keys other sessions hold, .Topics (pick) a claim of some topics, .Setting
the transaction-local setting that carries the picked ids, .Cols the
columns of an outbox.Row. {window} and {limit} stay in the text until
pickSQL writes a claim's limits in. The final text of each statement is in
../testdata/sql/postgres; see relay.go for why each is as it is.
*/}}

{{define "delivered"}}{{if .Keep}}UPDATE {{.T}} SET delivered_at = now() WHERE id = ANY($1){{else}}DELETE FROM {{.T}} WHERE id = ANY($1){{end}}{{end}}

{{define "due"}}delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
	  AND partition_key NOT IN (SELECT partition_key FROM blocked)
	  AND partition_key NOT IN (SELECT unnest($2::text[])){{if .Free}}{{skipHeld}}{{end}}{{end}}

{{define "pick"}}WITH blocked AS MATERIALIZED (
	SELECT DISTINCT partition_key FROM {{.T}} WHERE {{blockedRow "now()"}}
), {{if .Free}}{{heldKeys "$1"}}, {{end}}w AS MATERIALIZED (
	{{if .Topics}}{{topicWindow .T "(SELECT DISTINCT unnest($3::text[]) AS topic)" (include "due" .) "{window}"}}{{else}}SELECT id, partition_key FROM {{.T}}
	WHERE {{include "due" .}}
	ORDER BY id LIMIT {window}{{end}}
), g AS MATERIALIZED (
	SELECT partition_key, first, sum(n) OVER (ORDER BY first) - n AS before FROM (
		SELECT partition_key, min(id) AS first, count(*) AS n FROM w WHERE partition_key <> '' GROUP BY partition_key
		UNION ALL
		SELECT '', id, 1 FROM w WHERE partition_key = ''
	) x
), k AS MATERIALIZED (
	SELECT partition_key FROM (SELECT partition_key, before FROM g WHERE partition_key <> '' ORDER BY first OFFSET 0) d
	WHERE CASE WHEN before < {limit} THEN pg_try_advisory_xact_lock($1, hashtext(partition_key)) ELSE false END
), u AS MATERIALIZED (
	SELECT id FROM {{.T}}
	WHERE id = ANY(ARRAY(SELECT first FROM g WHERE partition_key = '' AND before < {limit}))
	  AND delivered_at IS NULL AND failed_at IS NULL
	FOR UPDATE SKIP LOCKED
)
SELECT set_config('{{.Setting}}', coalesce(array_agg(id ORDER BY id)::text, '{}'), true) IS NOT NULL,
	(SELECT count(*) FROM g WHERE partition_key <> '' AND before < {limit}) - (SELECT count(*) FROM k)
FROM (
	SELECT id FROM (SELECT w.id FROM w JOIN k USING (partition_key) UNION ALL SELECT id FROM u) p
	ORDER BY id LIMIT {limit}
) c{{end}}

{{define "take"}}WITH stop AS MATERIALIZED (
	SELECT partition_key, min(id) AS at FROM {{.T}} WHERE {{blockedRow "now()"}}
	GROUP BY partition_key
)
{{if .Keep}}UPDATE {{.T}} AS o SET delivered_at = now(){{else}}DELETE FROM {{.T}} AS o{{end}}
WHERE o.id = ANY(current_setting('{{.Setting}}')::bigint[])
  AND CASE WHEN o.delivered_at IS NULL THEN true ELSE false END
  AND NOT EXISTS (SELECT 1 FROM stop WHERE stop.partition_key = o.partition_key AND stop.at <= o.id)
RETURNING {{.Cols}}{{end}}

{{define "fail"}}UPDATE {{.T}} AS o SET
	attempts = o.attempts + 1,
	last_error = f.err,
	next_attempt_at = CASE WHEN f.park THEN o.next_attempt_at ELSE now() + f.delay_us * interval '1 microsecond' END,
	failed_at = CASE WHEN f.park THEN now() END
FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bool[]) AS f(id, err, delay_us, park)
WHERE o.id = f.id{{end}}
