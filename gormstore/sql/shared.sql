{{/*
Statements every database shares, parsed with each database's file
(postgres.sql, sqlite.sql), which defines "now": the SQL of the current
time, the database clock where there is one, else a parameter the driver
binds first (driver.nowArgs). Data: .T the quoted table, .Where the
condition a variant adds.
The final text of each statement is in ../testdata/sql/<database>.
*/}}

{{/* A row that stops its partition key: not delivered, and parked or
waiting for its retry time. The dot is the SQL of the current time. The
blocked partial index serves it. */}}
{{define "blocked_row"}}delivered_at IS NULL AND partition_key <> '' AND (attempts > 0 OR failed_at IS NOT NULL)
	  AND (failed_at IS NOT NULL OR next_attempt_at > {{.}}){{end}}

{{define "parked"}}delivered_at IS NULL AND failed_at IS NOT NULL{{end}}

{{define "list_failed"}}SELECT id, uuid, topic, partition_key, attempts, coalesce(last_error, '') AS last_error, created_at, failed_at
FROM {{.T}} WHERE {{template "parked"}} AND id > ? ORDER BY id LIMIT ?{{end}}

{{define "get_failed"}}SELECT id, uuid, topic, partition_key, attempts, coalesce(last_error, '') AS last_error, created_at, failed_at, metadata, payload
FROM {{.T}} WHERE {{template "parked"}} AND id = ?{{end}}

{{define "requeue"}}UPDATE {{.T}} SET failed_at = NULL, attempts = 0, next_attempt_at = {{template "now"}}
WHERE {{template "parked"}} AND {{.Where}}{{end}}

{{define "discard"}}DELETE FROM {{.T}} WHERE {{template "parked"}} AND {{.Where}}{{end}}

{{/* The given rows that are parked, locked until the transaction ends
(lock_rows: FOR UPDATE where the database has it). */}}
{{define "parked_ids"}}SELECT id FROM {{.T}} WHERE {{template "parked"}} AND id IN ? ORDER BY id{{template "lock_rows"}}{{end}}

{{define "count_delivered"}}SELECT count(*) FROM {{.T}} WHERE delivered_at IS NOT NULL AND delivered_at < {{template "cutoff"}}{{end}}
