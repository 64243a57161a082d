package gormstore_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// A claim with topics takes the oldest due rows of those topics only, in ID
// order across them; a topic named twice counts once.
func TestClaimTopicsMergesTopicsInIDOrder(t *testing.T) {
	t.Parallel()
	for _, d := range testdb.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			s, db := migrated(t, d, gormstore.Config{})
			ctx := context.Background()
			topics := []string{"a", "b", "c"}
			recs := make([]outbox.Record, 90)
			for i := range recs {
				recs[i] = record(topics[i%3], "", fmt.Sprint(i))
			}
			require.NoError(t, db.Transaction(func(tx *gorm.DB) error { return s.Save(ctx, tx, recs) }))

			c, err := s.Claim(ctx, outbox.ClaimParams{Limit: 20, Topics: []string{"c", "a", "c"}})
			require.NoError(t, err)
			defer c.Release(ctx)
			var want []int64
			require.NoError(t, db.Raw(`SELECT id FROM txoutbox_outbox WHERE topic IN ('a', 'c') ORDER BY id LIMIT 20`).Scan(&want).Error)
			var got []int64
			for _, r := range c.Rows() {
				require.Contains(t, []string{"a", "c"}, r.Topic)
				got = append(got, r.ID)
			}
			require.Equal(t, want, got)
		})
	}
}

// otherTopicBacklog saves rows rows of topic "other" on 50 keys, then 10
// of topic "mine" on two keys, and analyzes the table.
func otherTopicBacklog(t *testing.T, s *gormstore.Store, db *gorm.DB, rows int) {
	t.Helper()
	recs := make([]outbox.Record, 0, rows+10)
	for i := range rows {
		recs = append(recs, record("other", fmt.Sprintf("key-%d", i%50), "{}"))
	}
	for i := range 10 {
		recs = append(recs, record("mine", fmt.Sprintf("mine-%d", i%2), "{}"))
	}
	require.NoError(t, db.Transaction(func(tx *gorm.DB) error { return s.Save(context.Background(), tx, recs) }))
	analyze := "ANALYZE txoutbox_outbox"
	if db.Dialector.Name() == "mysql" {
		analyze = "ANALYZE TABLE txoutbox_outbox"
	}
	require.NoError(t, db.Exec(analyze).Error)
}

// A claim for some topics reads their rows from the topic index, with the
// generic plans claims run with: a backlog of another topic is not read
// row by row before them. Without the topic index, or with a plan that
// walks the ID order and filters on the topic, this fails.
func TestClaimTopicsPlanSkipsOtherTopics(t *testing.T) {
	t.Parallel()
	s, db := migrated(t, testdb.Postgres, gormstore.Config{})
	require.NoError(t, db.Exec(`INSERT INTO txoutbox_outbox (uuid, topic, partition_key, payload)
		SELECT 'o-' || g, 'other', 'key-' || (g % 50), convert_to(repeat('x', 400), 'UTF8') FROM generate_series(1, 200000) AS g`).Error)
	otherTopicBacklog(t, s, db, 0)
	ctx := context.Background()

	sqlDB, err := db.DB()
	require.NoError(t, err)
	conn, err := sqlDB.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	var plan []string
	require.NoError(t, conn.Raw(func(dc any) error {
		px := dc.(*stdlib.Conn).Conn()
		for _, q := range []string{
			"SET plan_cache_mode = force_generic_plan",
			"PREPARE txoutbox_pick(int, text[], text[]) AS " + s.PickSQL(1000, true),
		} {
			if _, err := px.Exec(ctx, q); err != nil {
				return err
			}
		}
		defer px.Exec(ctx, "DEALLOCATE txoutbox_pick; RESET plan_cache_mode")
		rows, err := px.Query(ctx, "EXPLAIN EXECUTE txoutbox_pick(1, '{}', '{mine}')")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				return err
			}
			plan = append(plan, line)
		}
		return rows.Err()
	}))
	text := strings.Join(plan, "\n")
	require.Contains(t, text, "txoutbox_outbox_topic_idx", "plan:\n%s", text)

	c, err := s.Claim(ctx, outbox.ClaimParams{Limit: 1000, Topics: []string{"mine"}})
	require.NoError(t, err)
	defer c.Release(ctx)
	require.Len(t, c.Rows(), 10)
	for _, r := range c.Rows() {
		require.Equal(t, "mine", r.Topic)
	}
}

// HasDue for some topics sees their due rows behind another topic's
// backlog, and none once they are claimed or blocked.
func TestHasDueTopicsBehindOtherTopics(t *testing.T) {
	t.Parallel()
	for _, d := range testdb.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			s, db := migrated(t, d, gormstore.Config{})
			ctx := context.Background()
			otherTopicBacklog(t, s, db, 2000)

			due, err := s.HasDue(ctx, []string{"mine", "mine"})
			require.NoError(t, err)
			require.True(t, due)
			due, err = s.HasDue(ctx, []string{"none"})
			require.NoError(t, err)
			require.False(t, due)

			// Park the head of each "mine" key: its later rows wait behind it.
			require.NoError(t, db.Exec(`UPDATE txoutbox_outbox SET failed_at = CURRENT_TIMESTAMP, attempts = 1
			WHERE id IN (SELECT min(id) FROM txoutbox_outbox WHERE topic = 'mine' GROUP BY partition_key)`).Error)
			due, err = s.HasDue(ctx, []string{"mine"})
			require.NoError(t, err)
			require.False(t, due)
			due, err = s.HasDue(ctx, []string{"other", "mine"})
			require.NoError(t, err)
			require.True(t, due)
		})
	}
}
