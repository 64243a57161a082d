{{/*
Inbox statements that are the same on every database, rendered once per
Inbox by newStatements. Data: .T the quoted inbox table, .F the quoted
failed table, each quoted for the database. A database's own file
(postgres.sql, sqlite.sql, mysql.sql) defines the statements that differ,
and may redefine any of these. {values} stays in record_many until
statements.recordMany writes a batch's rows in, record_row for each.
How a batch is cleaned up differs most (driver.cleanup): PostgreSQL and
SQLite define cleanup, MySQL cleanup_pick. The final text of each statement is in ../testdata/sql/<database>.
*/}}

{{define "record_row"}}(?, ?, ?){{end}}

{{define "record_many"}}INSERT INTO {{.T}} (consumer, message_uuid, received_at) VALUES {values} ON CONFLICT DO NOTHING RETURNING message_uuid{{end}}

{{define "unrecord"}}DELETE FROM {{.T}} WHERE consumer = ? AND message_uuid IN ?{{end}}

{{define "count_cleanup"}}SELECT count(*) FROM {{.T}} WHERE received_at < ?{{end}}

{{/* The failed table's columns, in the order of failedRow. */}}
{{define "failed_columns"}}id, consumer, message_uuid, topic, partition_key, payload, metadata, status, error, attempts, failed_at{{end}}

{{/* The condition of a key's first row (f) in the failed table. */}}
{{define "first_of_key"}}id = (SELECT min(id) FROM {{.F}} g WHERE g.consumer = f.consumer AND g.partition_key = f.partition_key){{end}}

{{define "list_failed"}}SELECT {{template "failed_columns"}} FROM {{.F}} WHERE id > ? ORDER BY id LIMIT ?{{end}}

{{define "list_failed_of"}}SELECT {{template "failed_columns"}} FROM {{.F}} WHERE id > ? AND consumer = ? ORDER BY id LIMIT ?{{end}}

{{define "failed_counts"}}SELECT consumer, status, count(*) AS n FROM {{.F}} GROUP BY consumer, status{{end}}

{{define "retry"}}UPDATE {{.F}} SET status = ? WHERE consumer = ? AND message_uuid IN ? AND status = ?{{end}}

{{define "retry_uuids"}}{{template "retry" .}} RETURNING message_uuid{{end}}

{{define "retry_all"}}UPDATE {{.F}} SET status = ? WHERE status = ?{{end}}

{{define "retry_all_of"}}UPDATE {{.F}} SET status = ? WHERE consumer = ? AND status = ?{{end}}

{{define "discard"}}DELETE FROM {{.F}} WHERE consumer = ? AND message_uuid IN ?{{end}}

{{define "discard_uuids"}}{{template "discard" .}} RETURNING message_uuid{{end}}

{{define "delete_failed"}}DELETE FROM {{.F}} WHERE id = ?{{end}}

{{define "fail_again"}}UPDATE {{.F}} SET status = ?, error = ?, attempts = attempts + 1, failed_at = ? WHERE id = ?{{end}}

{{define "insert_failed"}}INSERT INTO {{.F}} (consumer, message_uuid, topic, partition_key, payload, metadata, status, error, attempts, failed_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (consumer, message_uuid) DO NOTHING{{end}}

{{define "held_keys"}}SELECT partition_key, message_uuid FROM {{.F}} f WHERE consumer = ? AND partition_key IN ? AND {{template "first_of_key" .}}{{end}}

{{define "redrive"}}SELECT {{template "failed_columns"}} FROM {{.F}} WHERE consumer = ? AND status IN ? ORDER BY id LIMIT ?{{end}}

{{define "redrive_unkeyed"}}SELECT {{template "failed_columns"}} FROM {{.F}} WHERE consumer = ? AND partition_key = '' AND status = ? ORDER BY id LIMIT ?{{end}}

{{define "redrive_key_heads"}}SELECT partition_key FROM {{.F}} f WHERE consumer = ? AND partition_key <> '' AND status <> ? AND {{template "first_of_key" .}} ORDER BY id LIMIT ?{{end}}

{{define "redrive_keyed"}}SELECT {{template "failed_columns"}} FROM {{.F}} WHERE consumer = ? AND partition_key IN ? ORDER BY id{{end}}
