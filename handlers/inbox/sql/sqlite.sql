{{/*
Inbox statements of SQLite, with the shared ones of inbox.sql; see there
for the data. The final text of each statement is in ../testdata/sql/sqlite.
*/}}

{{define "cleanup"}}DELETE FROM {{.T}} WHERE rowid IN (SELECT rowid FROM {{.T}} WHERE received_at < @cutoff LIMIT @batch) AND received_at < @cutoff{{end}}
