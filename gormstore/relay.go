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

// claimSetting is the transaction-local setting that carries a claim's
// picked row ids from the statement that picks them to the one that takes
// them.
const claimSetting = "txoutbox.claim_ids"

// rowColumns are the columns of an outbox.Row, in scan order.
const rowColumns = "id, uuid, topic, partition_key, payload, metadata, attempts"

// Claim claims up to p.Limit due rows for a forwarder; see
// outbox.RelayStore. On PostgreSQL several forwarders may claim from one
// table at once: unordered rows are locked with FOR UPDATE SKIP LOCKED, and
// each partition key with a transaction-scoped advisory lock, so a key is
// relayed by one forwarder at a time, in ID order. The claim's transaction
// stays open until Finish or Release. On MySQL several forwarders may claim
// at once too: each key and unordered row is held by a session lock
// (GET_LOCK) on the claim's connection until Finish or Release, and no
// transaction stays open meanwhile. On SQLite claims of one Store are
// serialised; run one forwarder per database file.
func (s *Store) Claim(ctx context.Context, p outbox.ClaimParams) (outbox.Claim, error) {
	if p.Limit <= 0 {
		return nil, fmt.Errorf("%w: claim limit %d must be positive", ErrInvalidConfig, p.Limit)
	}
	return s.drv.claim(ctx, p)
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
