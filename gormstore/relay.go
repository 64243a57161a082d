package gormstore

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/txoutbox/txoutbox/outbox"
)

var (
	_ outbox.RelayStore = (*Store)(nil)
	_ outbox.Listener   = (*Store)(nil)
)

// relaySQL holds the store's relay statements, built once per store.
type relaySQL struct {
	keys, keysTopics       string // PostgreSQL: lock the keys of a claim
	unkeyed, unkeyedTopics string // PostgreSQL: claim unordered rows
	keyed, keyedTopics     string // PostgreSQL: rows of locked keys
	window, windowTopics   string // SQLite: claimable rows
	delivered              string
	fail                   string
}

// rowColumns are the columns of an outbox.Row, in scan order.
const rowColumns = "id, uuid, topic, partition_key, payload, metadata, attempts"

func newRelaySQL(s *Store) relaySQL {
	t := s.quoted
	r := relaySQL{}
	if s.cfg.KeepDelivered {
		r.delivered = "UPDATE " + t + " SET delivered_at = %s WHERE id %s"
	} else {
		r.delivered = "DELETE FROM " + t + " WHERE id %s"
	}
	if s.dialect == postgres {
		if s.cfg.KeepDelivered {
			r.delivered = fmt.Sprintf(r.delivered, "now()", "= ANY($1)")
		} else {
			r.delivered = fmt.Sprintf(r.delivered, "= ANY($1)")
		}
		// One statement claims the ordered rows. It locks the keys of the
		// oldest pending rows (the window w) with advisory locks, then takes
		// the window's rows of those keys, oldest first (a prefix of each
		// key's undelivered rows), and locks them FOR UPDATE. It tries only
		// the keys whose window rows fit in the limit, in the order of their
		// oldest row, so it holds no key it returns no row of: a concurrent
		// claim, told the keys to skip ($4), takes the others. Taking the rows
		// from the window, not from a scan per key, keeps the claim's cost
		// flat on a long backlog full of not yet vacuumed index entries.
		// The ids are chosen in the statement's snapshot, which may predate
		// the commit of the forwarder that held a key before; FOR UPDATE
		// re-reads each row's latest version, so a row that forwarder
		// delivered is skipped and a row it failed comes back blocked, and
		// the relay stops that key there.
		keyed := func(topics string) string {
			return `WITH blocked AS MATERIALIZED (
	SELECT DISTINCT partition_key FROM ` + t + `
	WHERE delivered_at IS NULL AND partition_key <> '' AND (attempts > 0 OR failed_at IS NOT NULL)
	  AND (failed_at IS NOT NULL OR next_attempt_at > now())
), w AS MATERIALIZED (
	SELECT id, partition_key FROM ` + t + `
	WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now() AND partition_key <> ''
	  AND partition_key NOT IN (SELECT partition_key FROM blocked)
	  AND partition_key NOT IN (SELECT unnest($4::text[]))` + topics + `
	ORDER BY id LIMIT $1
), k AS MATERIALIZED (
	SELECT partition_key FROM (
		SELECT partition_key, first, sum(n) OVER (ORDER BY first) - n AS before FROM (
			SELECT partition_key, min(id) AS first, count(*) AS n FROM w GROUP BY partition_key
		) g ORDER BY first OFFSET 0
	) d
	WHERE CASE WHEN before < $3 THEN pg_try_advisory_xact_lock($2, hashtext(partition_key)) ELSE false END
)
SELECT ` + rowColumns + `, (failed_at IS NOT NULL OR next_attempt_at > now()) FROM ` + t + ` WHERE id = ANY(ARRAY(
	SELECT w.id FROM w JOIN k USING (partition_key) ORDER BY w.id LIMIT $3
)) AND delivered_at IS NULL
ORDER BY id
FOR UPDATE`
		}
		r.keyed, r.keyedTopics = keyed(""), keyed(" AND topic = ANY($5)")
		unkeyed := func(topics string) string {
			return `SELECT ` + rowColumns + `, false FROM ` + t + ` WHERE id = ANY(ARRAY(
	SELECT id FROM ` + t + `
	WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now() AND partition_key = ''` + topics + `
	ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
ORDER BY id`
		}
		r.unkeyed, r.unkeyedTopics = unkeyed(""), unkeyed(" AND topic = ANY($2)")
		r.fail = `UPDATE ` + t + ` AS o SET
	attempts = o.attempts + 1,
	last_error = f.err,
	next_attempt_at = CASE WHEN f.park THEN o.next_attempt_at ELSE now() + f.delay_us * interval '1 microsecond' END,
	failed_at = CASE WHEN f.park THEN now() END
FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bool[]) AS f(id, err, delay_us, park)
WHERE o.id = f.id`
		return r
	}

	if s.cfg.KeepDelivered {
		r.delivered = fmt.Sprintf(r.delivered, "?", "IN ?")
	} else {
		r.delivered = fmt.Sprintf(r.delivered, "IN ?")
	}
	window := func(topics string) string {
		return `SELECT ` + rowColumns + ` FROM ` + t + `
WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= @now` + topics + `
  AND partition_key NOT IN (
	SELECT partition_key FROM ` + t + `
	WHERE delivered_at IS NULL AND partition_key <> '' AND (attempts > 0 OR failed_at IS NOT NULL)
	  AND (failed_at IS NOT NULL OR next_attempt_at > @now))
ORDER BY id LIMIT @limit`
	}
	r.window, r.windowTopics = window(""), window(" AND topic IN @topics")
	r.fail = `UPDATE ` + t + ` SET attempts = attempts + 1, last_error = @err,
	next_attempt_at = CASE WHEN @park THEN next_attempt_at ELSE @retry_at END,
	failed_at = CASE WHEN @park THEN @now END
WHERE id = @id`
	return r
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
