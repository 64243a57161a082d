{{/*
Statements on MySQL 8.0+ and MariaDB 10.6+, rendered once per store
(statements.go), with the statements of shared.sql. Times are UTC, from
the database clock (UTC_TIMESTAMP). Data: .T the quoted table, .Keep
KeepDelivered, .Topics a claim of some topics, .Cols the columns of an
outbox.Row. Lists whose length a call decides are written in at the call
({ids}, {keys}, {topics}, {exclude}; see mysqlDriver.expand), as are a
claim's limits ({window}, {limit}). The final text of each statement is
in ../testdata/sql/mysql; driver_mysql.go says why each is as it is.
*/}}

{{define "now"}}UTC_TIMESTAMP(6){{end}}

{{define "cutoff"}}UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND{{end}}

{{define "lock_rows"}} FOR UPDATE{{end}}

{{/* The head of the multi-row INSERT; the driver adds a tuple per row.
created_at and next_attempt_at default to UTC_TIMESTAMP(6). */}}
{{define "insert"}}INSERT INTO {{.T}} (uuid, topic, partition_key, payload, metadata) VALUES {{end}}

{{define "delivered"}}{{if .Keep}}UPDATE {{.T}} SET delivered_at = UTC_TIMESTAMP(6) WHERE id IN ({ids}){{else}}DELETE FROM {{.T}} WHERE id IN ({ids}){{end}}{{end}}

{{define "fail"}}UPDATE {{.T}} SET attempts = attempts + 1, last_error = ?,
	next_attempt_at = CASE WHEN ? THEN next_attempt_at ELSE UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND END,
	failed_at = CASE WHEN ? THEN UTC_TIMESTAMP(6) END
WHERE id = ?{{end}}

{{/* A due row o: pending, past its retry time, and of a key that does not
wait (blocked_idx holds only the rows that may stop their key). NOT
EXISTS, not NOT IN: blocked_key is NULL on most rows, and NOT IN's NULL
rule made MariaDB read the index's NULLs for every row (a second per
claim on a 50,000-row backlog). */}}
{{define "due"}}o.delivered_at IS NULL AND o.failed_at IS NULL AND o.next_attempt_at <= UTC_TIMESTAMP(6)
	  AND NOT EXISTS (
		SELECT 1 FROM {{.T}} AS b WHERE b.blocked_key = o.partition_key
		  AND (b.failed_at IS NOT NULL OR b.next_attempt_at > UTC_TIMESTAMP(6))){{if .Topics}}
	  AND o.topic IN ({topics}){{end}}{{end}}

{{/* The oldest due rows, from pending_idx (topic_idx for one topic). */}}
{{define "window"}}SELECT o.id, o.partition_key FROM {{.T}} AS o
WHERE {{template "due" .}}{exclude}
ORDER BY o.id LIMIT {window}{{end}}

{{/* A claim's rows, read after its locks were granted: those of its
window's rows (by primary key) that are of the keys and unordered rows it
holds and are still due, oldest first. A key's window rows are its oldest
due rows; one whose previous holder failed a row is blocked now, and left
out whole. */}}
{{define "take"}}SELECT {{.Cols}} FROM {{.T}} AS o
WHERE o.id IN ({ids})
	  AND {{template "due" .}}
ORDER BY o.id LIMIT {limit}{{end}}

{{/* Whether a claim would find a row: one of the oldest due rows whose
lock (see mysqlDriver.lockName; the parameter is the prefix) no session
holds. */}}
{{define "has_due"}}SELECT EXISTS (SELECT 1 FROM (
	SELECT o.id, o.partition_key FROM {{.T}} AS o WHERE {{template "due" .}}
	ORDER BY o.id LIMIT {{.Window}}
) w WHERE IS_FREE_LOCK(CONCAT(?, CASE WHEN partition_key = '' THEN CONCAT('#', id) ELSE SHA1(partition_key) END)) = 1){{end}}

{{define "stats"}}SELECT topic,
	SUM(failed_at IS NULL) AS pending,
	SUM(failed_at IS NOT NULL) AS failed,
	TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN failed_at IS NULL THEN created_at END), UTC_TIMESTAMP(6)) / 1e6 AS age_secs
FROM {{.T}} WHERE delivered_at IS NULL GROUP BY topic{{end}}

{{/* The batch of delivered rows a purge deletes, oldest delivery first,
from pending_idx (it leads with delivered_at). SKIP LOCKED lets several
cleaners take disjoint batches: two DELETE ... ORDER BY ... LIMIT of the
same rows deadlock on MySQL. */}}
{{define "purge_pick"}}SELECT id FROM {{.T}}
WHERE delivered_at IS NOT NULL AND delivered_at < {{template "cutoff"}}
ORDER BY delivered_at LIMIT ? FOR UPDATE SKIP LOCKED{{end}}

{{define "purge"}}DELETE FROM {{.T}} WHERE id IN ?{{end}}
