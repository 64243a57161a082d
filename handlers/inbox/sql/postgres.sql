{{/*
Inbox statements of PostgreSQL, with the shared ones of inbox.sql; see
there for the data. The final text of each statement is in
../testdata/sql/postgres.
*/}}

{{/*
= ANY(ARRAY(...)) keeps the planner from scanning the whole table per
batch, as IN (SELECT ... LIMIT) can. Rows are never updated, so a ctid
read in the subquery still names the same row.
*/}}
{{define "cleanup"}}DELETE FROM {{.T}} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {{.T}} WHERE received_at < @cutoff LIMIT @batch)) AND received_at < @cutoff{{end}}
