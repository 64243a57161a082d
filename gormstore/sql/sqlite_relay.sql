{{/*
Relay statements on SQLite, rendered once per store by newRelaySQL.
Data: .T the quoted table, .Keep KeepDelivered, .Topics (window) a claim
of some topics, .Cols the columns of an outbox.Row. The final text of each
statement is in ../testdata/sql/sqlite.
*/}}

{{define "delivered"}}{{if .Keep}}UPDATE {{.T}} SET delivered_at = ? WHERE id IN ?{{else}}DELETE FROM {{.T}} WHERE id IN ?{{end}}{{end}}

{{define "window"}}SELECT {{.Cols}} FROM {{.T}}
WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= @now{{if .Topics}} AND topic IN @topics{{end}}
  AND partition_key NOT IN (
	SELECT partition_key FROM {{.T}} WHERE {{blockedRow "@now"}})
ORDER BY id LIMIT @limit{{end}}

{{define "fail"}}UPDATE {{.T}} SET attempts = attempts + 1, last_error = @err,
	next_attempt_at = CASE WHEN @park THEN next_attempt_at ELSE @retry_at END,
	failed_at = CASE WHEN @park THEN @now END
WHERE id = @id{{end}}
