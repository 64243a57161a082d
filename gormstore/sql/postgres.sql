{{/*
Statements on PostgreSQL, rendered once per store (statements.go), with
the statements of shared.sql. Data: .T the quoted table, .Keep
KeepDelivered, .Free leave out keys other sessions hold, .Topics a claim of
some topics (their array is parameter .TopicsArg), .Exclude leave out the
keys of parameter $2, .Window the rows a window reads, .Setting the
transaction-local setting that carries the picked ids, .Cols the columns
of an outbox.Row. In pick, {window} and {limit} stay in the text until
pickSQL writes a claim's limits in. The final text of each statement is
in ../testdata/sql/postgres; driver_postgres.go says why each is as it is.
*/}}

{{define "lock_rows"}} FOR UPDATE{{end}}

{{define "now"}}now(){{end}}

{{/* The delivered_at before which a delivered row is older than the
duration parameter (microseconds). */}}
{{define "cutoff"}}now() - ?::bigint * interval '1 microsecond'{{end}}

{{/* One INSERT with one array parameter per column: the text is the same
for any number of rows, so pgx prepares it once per connection, and it
binds 5 parameters instead of 5 per row. */}}
{{define "insert"}}INSERT INTO {{.T}} (uuid, topic, partition_key, payload, metadata)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::jsonb[]){{end}}

{{/* One command's events as one transactional logical decoding message
(Config.WAL): $1 the prefix, $2 the frame (internal/walmsg). */}}
{{define "emit"}}SELECT pg_logical_emit_message(true, $1::text, $2::bytea){{end}}

{{/* What the WAL mode needs before its first write: wal_level, and the
replication slot ($1) in this database. */}}
{{define "wal_ready"}}SELECT current_setting('wal_level'), EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database() AND plugin = 'pgoutput'){{end}}

{{/* The pipelined commit's INSERT of a single record: scalar parameters
cost PostgreSQL less than one-element arrays through unnest (pgbench, 8
clients: about 5-20% more transactions per second). */}}
{{define "insert_one"}}INSERT INTO {{.T}} (uuid, topic, partition_key, payload, metadata)
VALUES ($1::text, $2::text, $3::text, $4::bytea, $5::jsonb){{end}}

{{define "delivered"}}{{if .Keep}}UPDATE {{.T}} SET delivered_at = now() WHERE id = ANY($1){{else}}DELETE FROM {{.T}} WHERE id = ANY($1){{end}}{{end}}

{{/* The key locks other sessions hold (other forwarders' claims) in the
lock space of the parameter the dot names. pg_locks shows a lock taken
with pg_try_advisory_xact_lock(lockspace, hashtext(key)) as classid
lockspace and objid the key's hash. Reading pg_locks reads the server's
whole lock table (about 30 µs on an idle server), so only stores whose
claims met keys held elsewhere lately do it (postgresDriver.contended). */}}
{{define "held_keys"}}held AS MATERIALIZED (
	SELECT objid FROM pg_locks
	WHERE locktype = 'advisory' AND classid = {{.}}::int4::oid AND objsubid = 2 AND granted
	  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
	  AND pid <> pg_backend_pid()
){{end}}

{{/* Leaves out the rows of the keys in held_keys. */}}
{{define "skip_held"}}
	  AND (partition_key = '' OR hashtext(partition_key)::oid NOT IN (SELECT objid FROM held)){{end}}

{{define "due"}}delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
	  AND partition_key NOT IN (SELECT partition_key FROM blocked){{if .Exclude}}
	  AND partition_key NOT IN (SELECT unnest($2::text[])){{end}}{{if .Free}}{{template "skip_held"}}{{end}}{{end}}

{{define "blocked"}}blocked AS MATERIALIZED (
	SELECT DISTINCT partition_key FROM {{.T}} WHERE {{template "blocked_row" "now()"}}
){{end}}

{{/* The id and partition_key of the oldest .Window due rows, oldest
first. With topics, each topic's oldest rows are read from the topic
index and merged, so a backlog of other topics is never read; the topic
is matched as a range and ordered by (topic, id): an equality lets a plan
with a guessed selectivity walk the id-ordered indexes instead, reading
every row of other topics first (70-150 ms per claim behind 200,000 rows
of another topic, against about 4 ms). */}}
{{define "window"}}{{if .Topics}}SELECT x.id, x.partition_key FROM (SELECT DISTINCT unnest({{.TopicsArg}}::text[]) AS topic) AS tp
	CROSS JOIN LATERAL (
		SELECT id, partition_key FROM {{.T}}
		WHERE topic >= tp.topic AND topic <= tp.topic AND {{template "due" .}}
		ORDER BY topic, id LIMIT {{.Window}}
	) AS x
	ORDER BY x.id LIMIT {{.Window}}{{else}}SELECT id, partition_key FROM {{.T}}
	WHERE {{template "due" .}}
	ORDER BY id LIMIT {{.Window}}{{end}}{{end}}

{{define "pick"}}WITH {{template "blocked" .}}, {{if .Free}}{{template "held_keys" "$1"}}, {{end}}w AS MATERIALIZED (
	{{template "window" .}}
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
	SELECT partition_key, min(id) AS at FROM {{.T}} WHERE {{template "blocked_row" "now()"}}
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

{{/* Whether a claim would find a row: a keyed row counts only if no
other session holds its key ($1: the lock space; $2: the topics). The
key's lock is given back as the statement ends. */}}
{{define "has_due"}}WITH {{template "blocked" .}}{{if .Free}}, {{template "held_keys" "$1"}}{{end}}
SELECT EXISTS (SELECT 1 FROM ({{template "window" .}}) w
	WHERE CASE WHEN partition_key = '' THEN true ELSE pg_try_advisory_xact_lock($1, hashtext(partition_key)) END){{end}}

{{/* The age of the oldest pending row, by the database clock that
timestamped the rows. */}}
{{define "stats"}}SELECT topic,
	count(*) FILTER (WHERE failed_at IS NULL) AS pending,
	count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed,
	EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE failed_at IS NULL))::float8 AS age_secs
FROM {{.T}} WHERE delivered_at IS NULL GROUP BY topic{{end}}

{{/* = ANY(ARRAY(...)) keeps the planner from joining the subquery against
the whole table, as IN (SELECT ... LIMIT) can; SKIP LOCKED lets several
cleaners delete disjoint batches at once. */}}
{{define "purge"}}DELETE FROM {{.T}} WHERE id = ANY(ARRAY(
	SELECT id FROM {{.T}}
	WHERE delivered_at IS NOT NULL AND delivered_at < {{template "cutoff"}}
	ORDER BY delivered_at LIMIT ? FOR UPDATE SKIP LOCKED)){{end}}

{{/* Rows that a relay reading another source (the WAL relay) hands
over to the table, in the order given (WITH ORDINALITY), each pending or
parked ($8). A row whose UUID an undelivered row already has is skipped:
a relay that restarts before confirming its source hands the same rows
over again. */}}
{{define "insert_relayed"}}INSERT INTO {{.T}} (uuid, topic, partition_key, payload, metadata, attempts, last_error, failed_at)
SELECT r.uuid, r.topic, r.partition_key, r.payload, r.metadata, r.attempts, NULLIF(r.last_error, ''), CASE WHEN r.parked THEN now() END
FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::jsonb[], $6::int4[], $7::text[], $8::bool[])
	WITH ORDINALITY AS r(uuid, topic, partition_key, payload, metadata, attempts, last_error, parked, n)
ORDER BY r.n
ON CONFLICT (uuid) WHERE delivered_at IS NULL DO NOTHING{{end}}

{{/* The partition keys that have an undelivered row, of those .Where
selects. Two branches, one per partial index: parked rows through the
blocked index, the others through the pending index. */}}
{{define "undelivered_keys"}}SELECT partition_key FROM {{.T}}
WHERE delivered_at IS NULL AND failed_at IS NULL AND {{.Where}}
UNION
SELECT partition_key FROM {{.T}}
WHERE delivered_at IS NULL AND failed_at IS NOT NULL AND {{.Where}}{{end}}
