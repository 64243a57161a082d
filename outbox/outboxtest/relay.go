package outboxtest

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// RelayHarness is one isolated relay backend under test, built by the
// function passed to [ExerciseRelay]: a [Harness] whose Store is also an
// [outbox.RelayStore], with the backend's operations on parked rows.
type RelayHarness struct {
	Harness
	// Requeue makes parked rows pending again with 0 attempts and returns
	// how many it changed (gormstore: Store.Requeue). Required.
	Requeue func(ctx context.Context, ids ...int64) (int64, error)
	// Discard deletes parked rows and returns how many it deleted
	// (gormstore: Store.Discard). Required.
	Discard func(ctx context.Context, ids ...int64) (int64, error)

	// Features a backend has or lacks, stated by its test. Each changes
	// only the checks its comment names.

	// SerialClaims declares a backend that holds one claim at a time
	// (SQLite): a second Claim waits until the first is finished or
	// released, and ClaimParams.ExcludeKeys is ignored. The suite then
	// skips the ExcludeKeys check and, in the exclusivity check, expects
	// the second claim to return only after the first ended.
	SerialClaims bool
}

// ExerciseRelay runs the relay contract suite: what a backend must keep
// for outbox.Forwarder. newHarness is called once per sub-test, from that
// sub-test, and must return a backend on a database no other test uses;
// sub-tests run in parallel. The suite checks, by claiming and reading the
// table back:
//   - a claim returns rows in ID order, at most Limit, and for each
//     partition key a prefix of its undelivered rows (across topics);
//   - a key stops at its first blocked row (retrying later, or parked):
//     neither that row nor any later row of the key is claimed, other
//     keys are;
//   - ClaimParams.Topics restricts a claim to those topics, each key's
//     prefix taken among its rows of those topics, but a blocked row holds
//     its key's later rows on every topic;
//   - ClaimParams.ExcludeKeys leaves out those keys (is ignored with
//     SerialClaims);
//   - Release gives rows back untouched: the next claim returns them with
//     the same attempts;
//   - Finish marks delivered rows delivered (gone, or Delivered), charges
//     failures an attempt (parked with Park, due again after RetryAfter),
//     gives every other claimed row back, and changes nothing when it
//     fails (a canceled context): the rows are claimable again once the
//     database has ended the failed claim;
//   - HasDue, when the store is an outbox.DueChecker, agrees with Claim in
//     every state above;
//   - Stats counts pending and parked rows, per topic;
//   - Requeue makes a parked row claimable again with 0 attempts, and
//     Discard deletes it so its key's later rows flow;
//   - while a claim is open, no other claim returns a row of its keys.
func ExerciseRelay(t *testing.T, newHarness func(t *testing.T) RelayHarness) {
	t.Helper()

	setup := func(t *testing.T) (RelayHarness, outbox.RelayStore) {
		t.Helper()
		h := newHarness(t)
		require.NotNil(t, h.Store, "outboxtest: Harness.Store is required")
		require.NotNil(t, h.DB, "outboxtest: Harness.DB is required")
		require.NotNil(t, h.Rows, "outboxtest: Harness.Rows is required")
		require.NotNil(t, h.Requeue, "outboxtest: RelayHarness.Requeue is required")
		require.NotNil(t, h.Discard, "outboxtest: RelayHarness.Discard is required")
		rs, ok := h.Store.(outbox.RelayStore)
		require.True(t, ok, "outboxtest: %T is not an outbox.RelayStore", h.Store)
		require.Empty(t, h.Rows(t, h.DB), "outboxtest: the harness must start with an empty table")
		return h, rs
	}
	ctx := context.Background()

	t.Run("ClaimReturnsKeyPrefixesInIDOrder", func(t *testing.T) {
		t.Parallel()
		h, rs := setup(t)
		ids := save(t, h.Harness, "a/t", "b/t", "a/t", "/t", "b/t", "a/t", "c/t")
		for _, limit := range []int{1, 2, 3, 5, 100} {
			c := claim(t, rs, outbox.ClaimParams{Limit: limit})
			got := rowIDs(c.Rows())
			require.LessOrEqual(t, len(got), limit, "limit %d", limit)
			require.True(t, slices.IsSorted(got), "limit %d: rows in ID order, got %v", limit, got)
			requireKeyPrefixes(t, h.Harness, c.Rows())
			if limit >= len(ids) {
				require.Equal(t, ids, got, "a claim larger than the backlog returns every due row")
			} else {
				require.NotEmpty(t, got, "limit %d", limit)
			}
			require.NoError(t, c.Release(ctx))
		}
	})

	t.Run("KeyStopsAtItsFirstBlockedRow", func(t *testing.T) {
		t.Parallel()
		h, rs := setup(t)
		ids := save(t, h.Harness, "a/t", "b/t", "a/t", "b/t", "/t", "c/t")
		finish(t, rs, nil, []outbox.Failure{{ID: ids[0], Error: "retry later", RetryAfter: time.Hour}}) // a's first row
		finish(t, rs, nil, []outbox.Failure{{ID: ids[1], Error: "poison", Park: true}})                 // b's first row
		c := claim(t, rs, outbox.ClaimParams{Limit: 100})
		require.Equal(t, []int64{ids[4], ids[5]}, rowIDs(c.Rows()), "a waits for its retry, b behind its parked row; the others go on")
		require.NoError(t, c.Release(ctx))
		requireHasDue(t, rs, nil, true)
		finish(t, rs, []int64{ids[4], ids[5]}, nil)
		requireHasDue(t, rs, nil, false) // only blocked keys are left

		rows := h.Rows(t, h.DB)
		require.Equal(t, 1, byID(rows, ids[0]).Attempts, "a failure costs an attempt")
		require.False(t, byID(rows, ids[0]).Failed, "retrying is not parked")
		require.True(t, byID(rows, ids[1]).Failed, "parked")
	})

	t.Run("RetryAfterMakesTheRowDueAgain", func(t *testing.T) {
		t.Parallel()
		h, rs := setup(t)
		ids := save(t, h.Harness, "a/t", "a/t")
		finish(t, rs, nil, []outbox.Failure{{ID: ids[0], Error: "hiccup", RetryAfter: 50 * time.Millisecond}})
		require.Eventually(t, func() bool {
			c := claim(t, rs, outbox.ClaimParams{Limit: 100})
			defer func() { require.NoError(t, c.Release(ctx)) }()
			return slices.Equal(rowIDs(c.Rows()), ids)
		}, 10*time.Second, 20*time.Millisecond, "the row and the rest of its key are due after RetryAfter")
		requireHasDue(t, rs, nil, true)
		require.Equal(t, 1, byID(h.Rows(t, h.DB), ids[0]).Attempts)
	})

	t.Run("TopicsFilter", func(t *testing.T) {
		t.Parallel()
		h, rs := setup(t)
		// a has a row on t1, then one on t2; b a t2 row only.
		ids := save(t, h.Harness, "a/t1", "a/t2", "b/t2", "/t1", "/t2")
		c := claim(t, rs, outbox.ClaimParams{Limit: 100, Topics: []string{"t2"}})
		require.Equal(t, []int64{ids[1], ids[2], ids[4]}, rowIDs(c.Rows()), "t2 only: a key's prefix among its rows of the topics claimed")
		require.NoError(t, c.Release(ctx))
		requireHasDue(t, rs, []string{"t2"}, true)
		requireHasDue(t, rs, []string{"none"}, false)
		c = claim(t, rs, outbox.ClaimParams{Limit: 100, Topics: []string{"t1", "none"}})
		require.Equal(t, []int64{ids[0], ids[3]}, rowIDs(c.Rows()))
		require.NoError(t, c.Finish(ctx, []int64{ids[0], ids[3]}, nil))
		requireHasDue(t, rs, []string{"t1"}, false)

		// A blocked row holds its key's later rows on every topic.
		more := save(t, h.Harness, "c/t1", "c/t2")
		finish(t, rs, nil, []outbox.Failure{{ID: more[0], Error: "poison", Park: true}})
		c = claim(t, rs, outbox.ClaimParams{Limit: 100, Topics: []string{"t2"}})
		require.Equal(t, []int64{ids[1], ids[2], ids[4]}, rowIDs(c.Rows()), "c's t2 row waits behind its parked t1 row")
		require.NoError(t, c.Release(ctx))
	})

	t.Run("ExcludeKeys", func(t *testing.T) {
		t.Parallel()
		h, rs := setup(t)
		ids := save(t, h.Harness, "a/t", "b/t", "a/t", "/t")
		c := claim(t, rs, outbox.ClaimParams{Limit: 100, ExcludeKeys: []string{"a"}})
		if h.SerialClaims {
			// ExcludeKeys is ignored: the claim is an ordinary one.
			require.Equal(t, ids, rowIDs(c.Rows()))
		} else {
			require.Equal(t, []int64{ids[1], ids[3]}, rowIDs(c.Rows()))
		}
		require.NoError(t, c.Release(ctx))
	})

	t.Run("ReleaseLeavesRowsUntouched", func(t *testing.T) {
		t.Parallel()
		h, rs := setup(t)
		ids := save(t, h.Harness, "a/t", "b/t")
		finish(t, rs, nil, []outbox.Failure{{ID: ids[1], Error: "hiccup", RetryAfter: time.Millisecond}})
		time.Sleep(20 * time.Millisecond)
		before := h.Rows(t, h.DB)
		c := claim(t, rs, outbox.ClaimParams{Limit: 100})
		require.Equal(t, ids, rowIDs(c.Rows()))
		require.NoError(t, c.Release(ctx))
		require.Equal(t, before, h.Rows(t, h.DB), "release changes nothing")
		c = claim(t, rs, outbox.ClaimParams{Limit: 100})
		require.Equal(t, ids, rowIDs(c.Rows()), "released rows are claimed again")
		require.Equal(t, 1, c.Rows()[1].Attempts, "with their attempts")
		require.NoError(t, c.Release(ctx))
	})

	t.Run("FinishIsAtomic", func(t *testing.T) {
		t.Parallel()
		h, rs := setup(t)
		ids := save(t, h.Harness, "a/t", "b/t", "c/t", "d/t")
		before := h.Rows(t, h.DB)
		c := claim(t, rs, outbox.ClaimParams{Limit: 100})
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		err := c.Finish(canceled, []int64{ids[0]}, []outbox.Failure{{ID: ids[1], Error: "x", Park: true}})
		require.Error(t, err, "Finish with a canceled context")
		require.Equal(t, before, h.Rows(t, h.DB), "a failed Finish changes nothing")

		// The rows come back once the database has ended the failed claim
		// (a backend may drop its connection, which the server notices
		// asynchronously).
		require.Eventually(t, func() bool {
			c = claim(t, rs, outbox.ClaimParams{Limit: 100})
			if slices.Equal(ids, rowIDs(c.Rows())) {
				return true
			}
			require.NoError(t, c.Release(ctx))
			return false
		}, 10*time.Second, 20*time.Millisecond, "a failed Finish leaves the rows claimable")
		require.NoError(t, c.Finish(ctx, []int64{ids[0]}, []outbox.Failure{
			{ID: ids[1], Error: "poison", Park: true},
			{ID: ids[2], Error: "hiccup", RetryAfter: time.Hour},
		}))
		rows := h.Rows(t, h.DB)
		if r, ok := findID(rows, ids[0]); ok {
			require.True(t, r.Delivered, "a delivered row is deleted or marked delivered")
		}
		require.True(t, byID(rows, ids[1]).Failed)
		require.Equal(t, 1, byID(rows, ids[1]).Attempts)
		require.Equal(t, 1, byID(rows, ids[2]).Attempts)
		require.Equal(t, 0, byID(rows, ids[3]).Attempts, "a row neither delivered nor failed is given back untouched")
		c = claim(t, rs, outbox.ClaimParams{Limit: 100})
		require.Equal(t, []int64{ids[3]}, rowIDs(c.Rows()))
		require.NoError(t, c.Release(ctx))
	})

	t.Run("StatsCountPendingAndParked", func(t *testing.T) {
		t.Parallel()
		h, rs := setup(t)
		ids := save(t, h.Harness, "a/t1", "b/t1", "c/t2", "/t2", "/t2")
		finish(t, rs, []int64{ids[3]}, []outbox.Failure{{ID: ids[0], Error: "poison", Park: true}})
		// Some databases keep times to the millisecond: let the oldest
		// row's age be one.
		time.Sleep(2 * time.Millisecond)
		st, err := rs.Stats(ctx)
		require.NoError(t, err)
		require.EqualValues(t, 3, st.Pending)
		require.EqualValues(t, 1, st.Failed)
		require.Positive(t, st.OldestPendingAge)
		require.Less(t, st.OldestPendingAge, time.Minute, "the rows were saved just now")
		require.Positive(t, st.Topics["t2"].OldestPendingAge)
		require.EqualValues(t, 1, st.Topics["t1"].Pending)
		require.EqualValues(t, 1, st.Topics["t1"].Failed)
		require.EqualValues(t, 2, st.Topics["t2"].Pending)
		require.EqualValues(t, 0, st.Topics["t2"].Failed)
	})

	t.Run("RequeueAndDiscard", func(t *testing.T) {
		t.Parallel()
		h, rs := setup(t)
		ids := save(t, h.Harness, "a/t", "a/t", "b/t", "b/t")
		finish(t, rs, nil, []outbox.Failure{
			{ID: ids[0], Error: "poison", Park: true},
			{ID: ids[2], Error: "poison", Park: true},
		})
		requireHasDue(t, rs, nil, false)

		n, err := h.Requeue(ctx, ids[0], ids[1]) // ids[1] is not parked
		require.NoError(t, err)
		require.EqualValues(t, 1, n, "only parked rows are requeued")
		n, err = h.Discard(ctx, ids[2], ids[3]) // ids[3] is not parked
		require.NoError(t, err)
		require.EqualValues(t, 1, n, "only parked rows are discarded")

		requireHasDue(t, rs, nil, true)
		c := claim(t, rs, outbox.ClaimParams{Limit: 100})
		require.Equal(t, []int64{ids[0], ids[1], ids[3]}, rowIDs(c.Rows()), "a requeued row and its key flow again; a discarded row's key goes on")
		require.Equal(t, 0, c.Rows()[0].Attempts, "requeued with 0 attempts")
		require.NoError(t, c.Release(ctx))
		_, ok := findID(h.Rows(t, h.DB), ids[2])
		require.False(t, ok, "a discarded row is gone")
	})

	t.Run("OpenClaimHoldsItsKeys", func(t *testing.T) {
		t.Parallel()
		h, rs := setup(t)
		ids := save(t, h.Harness, "a/t", "b/t", "a/t", "c/t", "b/t")
		first := claim(t, rs, outbox.ClaimParams{Limit: 2}) // a and b's first rows
		held := keysOf(first.Rows())
		require.NotEmpty(t, held)

		type result struct {
			c   outbox.Claim
			at  time.Time
			err error
		}
		second := make(chan result, 1)
		go func() {
			c, err := rs.Claim(ctx, outbox.ClaimParams{Limit: 100})
			second <- result{c, time.Now(), err}
		}()
		var got result
		if !h.SerialClaims {
			select {
			case got = <-second:
			case <-time.After(20 * time.Second):
				t.Fatal("a second claim waits for the first; a backend that holds one claim at a time says so with SerialClaims")
			}
			require.NoError(t, got.err)
			for _, r := range got.c.Rows() {
				require.NotContains(t, held, r.PartitionKey, "row %d: its key is held by an open claim", r.ID)
			}
			require.NoError(t, got.c.Release(ctx))
			require.NoError(t, first.Finish(ctx, rowIDs(first.Rows()), nil))
		} else {
			select {
			case got = <-second:
				t.Fatal("with SerialClaims a second claim waits for the first to end")
			case <-time.After(300 * time.Millisecond):
			}
			released := time.Now()
			require.NoError(t, first.Finish(ctx, rowIDs(first.Rows()), nil))
			got = <-second
			require.NoError(t, got.err)
			require.False(t, got.at.Before(released), "the second claim returned while the first was open")
			delivered := rowIDs(first.Rows())
			for _, r := range got.c.Rows() {
				require.NotContains(t, delivered, r.ID, "a delivered row is claimed again")
			}
			require.NoError(t, got.c.Release(ctx))
		}
		c := claim(t, rs, outbox.ClaimParams{Limit: 100})
		require.Equal(t, remove(ids, rowIDs(first.Rows())), rowIDs(c.Rows()), "after the first claim finished, the rest is due")
		require.NoError(t, c.Release(ctx))
	})
}

// save saves one record per spec, "key/topic" ("" key before the slash for
// an unordered row), in one transaction, and returns their row IDs.
func save(t *testing.T, h Harness, specs ...string) []int64 {
	t.Helper()
	ctx := context.Background()
	before := len(h.Rows(t, h.DB))
	recs := make([]outbox.Record, len(specs))
	for i, s := range specs {
		key, topic, _ := strings.Cut(s, "/")
		recs[i] = newRecord(topic, key, []byte(`{"n":1}`), map[string]string{"name": "Event"})
	}
	require.NoError(t, h.DB.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		return h.Store.Save(ctx, tx, recs)
	}))
	rows := h.Rows(t, h.DB)[before:]
	require.Len(t, rows, len(specs))
	ids := make([]int64, len(rows))
	for i, r := range rows {
		require.Equal(t, recs[i].Message.UUID, r.UUID)
		ids[i] = r.ID
	}
	return ids
}

// claim claims with p. A claim the test leaves open (it failed) is
// released when the test ends, before its database is dropped.
func claim(t *testing.T, rs outbox.RelayStore, p outbox.ClaimParams) outbox.Claim {
	t.Helper()
	c, err := rs.Claim(context.Background(), p)
	require.NoError(t, err)
	require.NotNil(t, c)
	t.Cleanup(func() { _ = c.Release(context.Background()) })
	return c
}

// finish claims everything due and finishes the claim with delivered and
// failures, giving the other rows back.
func finish(t *testing.T, rs outbox.RelayStore, delivered []int64, failures []outbox.Failure) {
	t.Helper()
	c := claim(t, rs, outbox.ClaimParams{Limit: 1000})
	claimed := rowIDs(c.Rows())
	for _, id := range delivered {
		require.Contains(t, claimed, id, "outboxtest: row %d is not due", id)
	}
	for _, f := range failures {
		require.Contains(t, claimed, f.ID, "outboxtest: row %d is not due", f.ID)
	}
	require.NoError(t, c.Finish(context.Background(), delivered, failures))
}

// requireHasDue checks HasDue, when the store has it, against want and
// against a claim of the same topics.
func requireHasDue(t *testing.T, rs outbox.RelayStore, topics []string, want bool) {
	t.Helper()
	c := claim(t, rs, outbox.ClaimParams{Limit: 1000, Topics: topics})
	claimed := len(c.Rows()) > 0
	require.NoError(t, c.Release(context.Background()))
	require.Equal(t, want, claimed, "a claim of topics %v finds rows", topics)
	dc, ok := rs.(outbox.DueChecker)
	if !ok {
		return
	}
	due, err := dc.HasDue(context.Background(), topics)
	require.NoError(t, err)
	require.Equal(t, claimed, due, "HasDue(%v) must agree with Claim", topics)
}

// requireKeyPrefixes checks that the claimed rows of each key are the
// first undelivered rows of that key, in ID order.
func requireKeyPrefixes(t *testing.T, h Harness, claimed []outbox.Row) {
	t.Helper()
	perKey := map[string][]int64{}
	for _, r := range h.Rows(t, h.DB) {
		if r.PartitionKey != "" && !r.Delivered {
			perKey[r.PartitionKey] = append(perKey[r.PartitionKey], r.ID)
		}
	}
	got := map[string][]int64{}
	for _, r := range claimed {
		if r.PartitionKey != "" {
			got[r.PartitionKey] = append(got[r.PartitionKey], r.ID)
		}
	}
	for k, ids := range got {
		require.Equal(t, perKey[k][:len(ids)], ids, "key %s: a claim takes a prefix of the key's rows", k)
	}
}

func rowIDs(rows []outbox.Row) []int64 {
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	return ids
}

func keysOf(rows []outbox.Row) []string {
	var keys []string
	for _, r := range rows {
		if r.PartitionKey != "" && !slices.Contains(keys, r.PartitionKey) {
			keys = append(keys, r.PartitionKey)
		}
	}
	return keys
}

func findID(rows []Row, id int64) (Row, bool) {
	for _, r := range rows {
		if r.ID == id {
			return r, true
		}
	}
	return Row{}, false
}

func byID(rows []Row, id int64) Row {
	r, _ := findID(rows, id)
	return r
}

func remove(ids, drop []int64) []int64 {
	var out []int64
	for _, id := range ids {
		if !slices.Contains(drop, id) {
			out = append(out, id)
		}
	}
	return out
}
