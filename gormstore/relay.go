package gormstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"path"
	"strings"
	"text/template"
	"unicode/utf8"

	"github.com/txoutbox/txoutbox/outbox"
)

var (
	_ outbox.RelayStore = (*Store)(nil)
	_ outbox.Listener   = (*Store)(nil)
)

// relaySQL holds the store's relay statements, built once per store.
type relaySQL struct {
	// PostgreSQL: lock a claim's keys and pick its rows (templates), per
	// [topics filter][skip keys held elsewhere].
	pick                 [2][2]string
	take                 string // PostgreSQL: take the picked rows
	window, windowTopics string // SQLite: claimable rows
	delivered            string
	fail                 string
}

// claimSetting is the transaction-local setting that carries a claim's
// picked row ids from the statement that picks them to the one that takes
// them.
const claimSetting = "txoutbox.claim_ids"

// blockedRow is the condition of a row that stops its partition key: not
// delivered, and parked or waiting for its retry time. The blocked partial
// index serves it. now is the SQL expression of the current time.
func blockedRow(now string) string {
	return `delivered_at IS NULL AND partition_key <> '' AND (attempts > 0 OR failed_at IS NOT NULL)
	  AND (failed_at IS NOT NULL OR next_attempt_at > ` + now + `)`
}

// rowColumns are the columns of an outbox.Row, in scan order.
const rowColumns = "id, uuid, topic, partition_key, payload, metadata, attempts"

// relayFiles holds the relay statements of each database, as templates.
//
//go:embed sql/postgres_relay.sql sql/sqlite_relay.sql
var relayFiles embed.FS

// relayTemplates are the parsed relay statements per database.
var relayTemplates = map[dialect]*template.Template{
	postgres: parseRelay("sql/postgres_relay.sql"),
	sqlite:   parseRelay("sql/sqlite_relay.sql"),
}

// parseRelay parses one file of relay statements. The templates share the
// snippets HasDue uses too (blockedRow, heldKeys, skipHeld, topicWindow);
// include renders a named template into a string, for a snippet's
// argument.
func parseRelay(name string) *template.Template {
	var t *template.Template
	t = template.Must(template.New(path.Base(name)).Funcs(template.FuncMap{
		"blockedRow":  blockedRow,
		"heldKeys":    heldKeys,
		"topicWindow": topicWindow,
		"skipHeld":    func() string { return skipHeld },
		"include": func(name string, data any) (string, error) {
			var b strings.Builder
			err := t.ExecuteTemplate(&b, name, data)
			return b.String(), err
		},
	}).ParseFS(relayFiles, name))
	return t
}

// relayVars are the data of the relay templates.
type relayVars struct {
	T       string // the quoted table
	Setting string // claimSetting
	Cols    string // rowColumns
	Keep    bool   // Config.KeepDelivered
	Free    bool   // pick: leave out the keys other sessions hold
	Topics  bool   // pick, window: a claim of some topics
}

// newRelaySQL renders the store's relay statements from its database's
// templates (sql/*_relay.sql; the final texts are in testdata/sql).
//
// On PostgreSQL a claim is two statements in a READ COMMITTED transaction.
//
// pick chooses the claim's rows from the window w of the oldest due
// rows: it walks the window's keys (each unordered row counts as a key
// of its own) in the order of their oldest row while their rows fit
// in the limit, takes an advisory lock on each key it can, locks the
// unordered rows it can with FOR UPDATE SKIP LOCKED, and keeps the
// ids of the picked rows, oldest first, in a transaction-local
// setting. A key's picked rows are a prefix of its due rows. It holds
// no key it picks no row of, so a concurrent claim takes the others;
// keys already held by the caller are skipped ($2). A key another
// forwarder holds fails its lock, but its rows still fill the window
// and count against the limit, so the claim may find nothing while
// other keys are free; the pick's second column counts those keys.
// A store whose claims met them lately uses the free variant, which
// leaves the keys held elsewhere out of the window (heldKeys). Taking
// the rows from the window, not from a scan per key, keeps the
// claim's cost flat on a long backlog full of not yet vacuumed index
// entries.
//
// take, after a SAVEPOINT, deletes the picked rows (or marks them
// delivered) and returns them: if every row is published, Finish only
// commits; otherwise it rolls back to the savepoint and records what
// happened. take runs in a snapshot taken after pick's key locks were
// granted, so after the commit of the forwarder that held a key
// before: a row it delivered is gone, and a key whose row it failed
// stops before that row (stop). No other writer touches a held key's
// rows.
//
// Limits are written into the text ({window}, {limit}) and the claim
// runs with generic plans: one plan per statement and connection, not
// one per claim. Plans must stay sound on a table not analyzed yet,
// whose statistics guess that few rows are undelivered: ids are
// matched through arrays (the primary key), and take tests
// delivered_at inside a CASE so that no index on undelivered rows
// looks cheaper than the primary key.
func newRelaySQL(s *Store) (relaySQL, error) {
	t := relayTemplates[s.dialect]
	v := relayVars{T: s.quoted, Setting: claimSetting, Cols: rowColumns, Keep: s.cfg.KeepDelivered}
	var r relaySQL
	var errs []error
	render := func(name string, v relayVars) string {
		var b strings.Builder
		errs = append(errs, t.ExecuteTemplate(&b, name, v))
		return b.String()
	}
	r.delivered, r.fail = render("delivered", v), render("fail", v)
	if s.dialect == postgres {
		for i, topics := range []bool{false, true} {
			for j, free := range []bool{false, true} {
				pv := v
				pv.Topics, pv.Free = topics, free
				r.pick[i][j] = render("pick", pv)
			}
		}
		r.take = render("take", v)
	} else {
		r.window = render("window", v)
		tv := v
		tv.Topics = true
		r.windowTopics = render("window", tv)
	}
	if err := errors.Join(errs...); err != nil {
		return relaySQL{}, fmt.Errorf("gormstore: relay statements: %w", err)
	}
	return r, nil
}

// heldKeys returns a PostgreSQL CTE, held, of the key locks that other
// sessions hold (other forwarders' claims) in the lock space given by the
// placeholder lockspace. pg_locks shows a lock taken with
// pg_try_advisory_xact_lock(lockspace, hashtext(key)) as classid lockspace
// and objid the key's hash. Reading pg_locks reads the server's whole
// lock table (about 30 µs on an idle server), so only stores whose claims
// met keys held elsewhere lately do it (see Store.contended).
func heldKeys(lockspace string) string {
	return `held AS MATERIALIZED (
	SELECT objid FROM pg_locks
	WHERE locktype = 'advisory' AND classid = ` + lockspace + `::int4::oid AND objsubid = 2 AND granted
	  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
	  AND pid <> pg_backend_pid()
)`
}

// skipHeld is the window condition that leaves out the rows of keys in
// heldKeys, so that they do not count against a claim's window and limit.
const skipHeld = `
	  AND (partition_key = '' OR hashtext(partition_key)::oid NOT IN (SELECT objid FROM held))`

// topicWindow returns a PostgreSQL query of the id and partition_key of
// the oldest limit rows that match cond among the topics of the relation
// topics (one column, topic), oldest first. It reads each topic's oldest
// rows from the topic index and merges them, so a backlog of other topics
// is never read. The topic is matched as a range, and each topic's rows
// are ordered by (topic, id): an equality would let a plan with a guessed
// selectivity walk the id-ordered indexes instead, reading every row of
// other topics before the first of these (70–150 ms per claim behind
// 200,000 rows of another topic, against about 4 ms).
func topicWindow(table, topics, cond, limit string) string {
	return `SELECT x.id, x.partition_key FROM ` + topics + ` AS tp
	CROSS JOIN LATERAL (
		SELECT id, partition_key FROM ` + table + `
		WHERE topic >= tp.topic AND topic <= tp.topic AND ` + cond + `
		ORDER BY topic, id LIMIT ` + limit + `
	) AS x
	ORDER BY x.id LIMIT ` + limit
}

// Claim claims up to p.Limit due rows for a forwarder; see
// outbox.RelayStore. On PostgreSQL several forwarders may claim from one
// table at once: unordered rows are locked with FOR UPDATE SKIP LOCKED, and
// each partition key with a transaction-scoped advisory lock, so a key is
// relayed by one forwarder at a time, in ID order. The claim's transaction
// stays open until Finish or Release. On SQLite claims of one Store are
// serialised; run one forwarder per database file.
func (s *Store) Claim(ctx context.Context, p outbox.ClaimParams) (outbox.Claim, error) {
	if p.Limit <= 0 {
		return nil, fmt.Errorf("%w: claim limit %d must be positive", ErrInvalidConfig, p.Limit)
	}
	if s.dialect == postgres {
		return s.claimPostgres(ctx, p)
	}
	return s.claimSQLite(ctx, p)
}

// maxErrorLen bounds the error text stored in last_error.
const maxErrorLen = 2000

// cleanError makes err text storable: valid UTF-8, no NUL, bounded length.
func cleanError(s string) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "?")
	if len(s) > maxErrorLen {
		s = s[:maxErrorLen]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}
