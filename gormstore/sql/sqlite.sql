{{/*
Statements on SQLite, rendered once per store (statements.go), with the
statements of shared.sql. Times are bound by the driver, in UTC: SQLite
has no clock the rows share. Data: .T the quoted table, .Keep
KeepDelivered, .Topics a claim of some topics, .Cols the columns of an
outbox.Row. The final text of each statement is in
../testdata/sql/sqlite.
*/}}

{{define "lock_rows"}}{{end}}

{{define "now"}}?{{end}}

{{define "cutoff"}}?{{end}}

{{/* The head of the multi-row INSERT; the driver adds a tuple per row. */}}
{{define "insert"}}INSERT INTO {{.T}} (uuid, topic, partition_key, payload, metadata, created_at, next_attempt_at) VALUES {{end}}

{{define "delivered"}}{{if .Keep}}UPDATE {{.T}} SET delivered_at = ? WHERE id IN ?{{else}}DELETE FROM {{.T}} WHERE id IN ?{{end}}{{end}}

{{define "due"}}delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= @now{{if .Topics}} AND topic IN @topics{{end}}
  AND partition_key NOT IN (
	SELECT partition_key FROM {{.T}} WHERE {{template "blocked_row" "@now"}}){{end}}

{{define "window"}}SELECT {{.Cols}} FROM {{.T}}
WHERE {{template "due" .}}
ORDER BY id LIMIT @limit{{end}}

{{define "fail"}}UPDATE {{.T}} SET attempts = attempts + 1, last_error = @err,
	next_attempt_at = CASE WHEN @park THEN next_attempt_at ELSE @retry_at END,
	failed_at = CASE WHEN @park THEN @now END
WHERE id = @id{{end}}

{{define "has_due"}}SELECT EXISTS (SELECT 1 FROM {{.T}} WHERE {{template "due" .}}){{end}}

{{/* The age of the oldest pending row by the machine's clock, which
stamped it. */}}
{{define "stats"}}SELECT topic,
	sum(failed_at IS NULL) AS pending,
	sum(failed_at IS NOT NULL) AS failed,
	(julianday('now') - julianday(min(CASE WHEN failed_at IS NULL THEN created_at END))) * 86400.0 AS age_secs
FROM {{.T}} WHERE delivered_at IS NULL GROUP BY topic{{end}}

{{define "purge"}}DELETE FROM {{.T}} WHERE id IN (
	SELECT id FROM {{.T}}
	WHERE delivered_at IS NOT NULL AND delivered_at < {{template "cutoff"}}
	ORDER BY delivered_at LIMIT ?){{end}}
