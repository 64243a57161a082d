package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/spf13/cobra"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/retention"
	"gorm.io/gorm"
)

// withDB opens the database of the global flags, runs f and closes it.
func (o *options) withDB(ctx context.Context, create bool, f func(db *gorm.DB) error) error {
	raw := o.databaseURL
	if raw == "" {
		raw = o.getenv(EnvDatabaseURL)
	}
	if o.connectTimeout <= 0 {
		return usagef("--connect-timeout %v must be positive", o.connectTimeout)
	}
	target, err := parseDatabaseURL(raw, o.connectTimeout)
	if err != nil {
		return err
	}
	db, err := target.open(ctx, o.connectTimeout, create)
	if err != nil {
		return err
	}
	defer closeDB(db)
	return f(db)
}

// withStore opens the outbox store of the global flags.
func (o *options) withStore(ctx context.Context, f func(s *gormstore.Store) error) error {
	return o.withDB(ctx, false, func(db *gorm.DB) error {
		s, err := gormstore.New(db, gormstore.Config{Table: o.table})
		if err != nil {
			return err
		}
		return hintMissingTable(f(s))
	})
}

// mysqlNoSuchTable is MySQL's ER_NO_SUCH_TABLE.
const mysqlNoSuchTable = 1146

// hintMissingTable adds what to do to a missing-table error: PostgreSQL's
// "does not exist", SQLite's "no such table", MySQL's error 1146.
func hintMissingTable(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	var myErr *mysql.MySQLError
	if strings.Contains(msg, "does not exist") || strings.Contains(msg, "no such table") ||
		(errors.As(err, &myErr) && myErr.Number == mysqlNoSuchTable) || strings.Contains(msg, "Error 1146 (42S02)") {
		return fmt.Errorf("%w (wrong --table or --database-url, or run txoutbox migrate first)", err)
	}
	return err
}

func migrateCmd(o *options, run runWrapper) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate [outbox|inbox]...",
		Short: "Create or upgrade the outbox and inbox tables (both by default)",
		Long: `Create or upgrade the outbox table (--table) and the inbox table (--inbox-table),
or only the ones named. Idempotent, and safe while the application runs: on
PostgreSQL each table's migration holds an advisory lock, on MySQL and MariaDB
a named lock (GET_LOCK).`,
		Example: `  txoutbox migrate --database-url postgres://app@db:5432/app
  txoutbox migrate outbox --database-url ./app.db`,
		ValidArgs: []string{"outbox", "inbox"},
		Args:      cobra.OnlyValidArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			doOutbox := len(args) == 0 || slices.Contains(args, "outbox")
			doInbox := len(args) == 0 || slices.Contains(args, "inbox")
			ctx := cmd.Context()
			out := migrateOutput{}
			err := o.withDB(ctx, true, func(db *gorm.DB) error {
				var (
					s   *gormstore.Store
					in  *inbox.Inbox
					err error
				)
				// Validate both table names before changing anything.
				if doOutbox {
					if s, err = gormstore.New(db, gormstore.Config{Table: o.table}); err != nil {
						return err
					}
				}
				if doInbox {
					if in, err = inbox.New(db, inbox.Config{Table: o.inboxTable}); err != nil {
						return err
					}
				}
				if s != nil {
					if err := s.Migrate(ctx); err != nil {
						return err
					}
					out.OutboxTable = s.Table()
				}
				if in != nil {
					if err := in.Migrate(ctx); err != nil {
						return err
					}
					out.InboxTable = in.Table()
				}
				return nil
			})
			if err != nil {
				return err
			}
			return o.print(cmd, out, func(p *printer) {
				if out.OutboxTable != "" {
					p.linef("migrated outbox table %s", out.OutboxTable)
				}
				if out.InboxTable != "" {
					p.linef("migrated inbox table %s", out.InboxTable)
				}
			})
		}),
	}
}

type migrateOutput struct {
	OutboxTable string `json:"outbox_table,omitempty"`
	InboxTable  string `json:"inbox_table,omitempty"`
}

func statusCmd(o *options, run runWrapper) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show pending and failed events, the oldest pending age, and consumers' failed messages",
		Long: `Show the rows waiting in the outbox: pending (not yet delivered, not parked),
failed (parked after MaxAttempts, waiting for "failed retry" or "failed discard"),
and the age of the oldest pending row, overall and per topic. A growing oldest
pending age means the forwarder is behind, stopped, or a key is blocked.

When the inbox's failed table exists (the --inbox-table name followed by
"_failed"), also show per consumer how many of its messages are failed, held
and marked for retry (see "inbox failed").`,
		Example: `  txoutbox status
  txoutbox status --json | jq .oldest_pending_age_seconds`,
		Args: cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			var out statusOutput
			err := o.withDB(cmd.Context(), false, func(db *gorm.DB) error {
				s, err := gormstore.New(db, gormstore.Config{Table: o.table})
				if err != nil {
					return err
				}
				st, err := s.Stats(cmd.Context())
				if err != nil {
					return hintMissingTable(err)
				}
				out = statusOutput{
					Table:   s.Table(),
					Pending: st.Pending,
					Failed:  st.Failed,
					age:     newAge(st.OldestPendingAge),
					Topics:  []topicStatus{},
				}
				for name, t := range st.Topics {
					out.Topics = append(out.Topics, topicStatus{Topic: name, Pending: t.Pending, Failed: t.Failed, age: newAge(t.OldestPendingAge)})
				}
				slices.SortFunc(out.Topics, func(a, b topicStatus) int { return cmp.Compare(a.Topic, b.Topic) })
				out.Consumers, err = o.consumerStatus(cmd.Context(), db)
				return err
			})
			if err != nil {
				return err
			}
			return o.print(cmd, out, func(p *printer) {
				p.linef("outbox %s: %d pending, %d failed, oldest pending %s", out.Table, out.Pending, out.Failed, out.OldestPendingAge)
				if len(out.Topics) > 0 {
					p.linef("")
					tw := p.table("TOPIC", "PENDING", "FAILED", "OLDEST PENDING")
					for _, t := range out.Topics {
						tw.row(t.Topic, t.Pending, t.Failed, t.OldestPendingAge)
					}
					tw.flush()
				}
				if len(out.Consumers) == 0 {
					return
				}
				p.linef("")
				tw := p.table("CONSUMER", "FAILED", "HELD", "RETRY")
				for _, c := range out.Consumers {
					tw.row(c.Consumer, c.Failed, c.Held, c.Retry)
				}
				tw.flush()
			})
		}),
	}
}

// consumerStatus counts the inbox failed table's rows per consumer; nil
// when the table does not exist (no inbox.Consumer ever ran there).
func (o *options) consumerStatus(ctx context.Context, db *gorm.DB) ([]consumerStatus, error) {
	in, err := inbox.New(db, inbox.Config{Table: o.inboxTable})
	if err != nil {
		return nil, err
	}
	if !db.WithContext(ctx).Migrator().HasTable(in.FailedTable()) {
		return nil, nil
	}
	counts, err := in.FailedCounts(ctx)
	if err != nil {
		return nil, err
	}
	out := []consumerStatus{}
	for name, c := range counts {
		out = append(out, consumerStatus{Consumer: name, Failed: c[inbox.StatusFailed], Held: c[inbox.StatusHeld], Retry: c[inbox.StatusRetry]})
	}
	slices.SortFunc(out, func(a, b consumerStatus) int { return cmp.Compare(a.Consumer, b.Consumer) })
	return out, nil
}

// consumerStatus is a consumer's rows in the inbox failed table.
type consumerStatus struct {
	Consumer string `json:"consumer"`
	Failed   int64  `json:"failed"`
	Held     int64  `json:"held"`
	Retry    int64  `json:"retry"`
}

// age is a duration shown as text ("3m4s", "-" for none) and seconds.
type age struct {
	OldestPendingAge        string  `json:"oldest_pending_age"`
	OldestPendingAgeSeconds float64 `json:"oldest_pending_age_seconds"`
}

func newAge(d time.Duration) age {
	return age{OldestPendingAge: formatAge(d), OldestPendingAgeSeconds: d.Seconds()}
}

// formatAge rounds an age for people: milliseconds below a second, whole
// seconds above; "-" for none.
func formatAge(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

type statusOutput struct {
	Table   string `json:"table"`
	Pending int64  `json:"pending"`
	Failed  int64  `json:"failed"`
	age
	Topics []topicStatus `json:"topics"`
	// Consumers lists the consumers with rows in the inbox failed table.
	Consumers []consumerStatus `json:"consumers,omitempty"`
}

type topicStatus struct {
	Topic   string `json:"topic"`
	Pending int64  `json:"pending"`
	Failed  int64  `json:"failed"`
	age
}

func failedCmd(o *options, run runWrapper) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "failed",
		Short: "List, show, retry or discard failed (parked) events",
		Long: `A row is parked (failed) after MaxAttempts failed publishes, or at once when it
cannot become a message. Its partition key stays blocked until the row is
retried (after fixing the cause) or discarded (never published).`,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q for %q (use list, show, retry or discard)", args[0], cmd.CommandPath())
			}
			return usagef("missing command for %q (use list, show, retry or discard)", cmd.CommandPath())
		}),
	}
	cmd.AddCommand(failedListCmd(o, run), failedShowCmd(o, run), failedRetryCmd(o, run), failedDiscardCmd(o, run))
	return cmd
}

// maxListLimit bounds failed list --limit.
const maxListLimit = 10_000

func failedListCmd(o *options, run runWrapper) *cobra.Command {
	var limit int
	var after int64
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List failed events, oldest first, with their last error",
		Example: `  txoutbox failed list
  txoutbox failed list --limit 100 --after 4711
  txoutbox failed list --json | jq -r '.failed[].id'`,
		Args: cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			if limit <= 0 || limit > maxListLimit {
				return usagef("--limit %d is out of range (1 to %d)", limit, maxListLimit)
			}
			if after < 0 {
				return usagef("--after %d must not be negative", after)
			}
			out := failedListOutput{Failed: []failedRow{}}
			err := o.withStore(cmd.Context(), func(s *gormstore.Store) error {
				out.Table = s.Table()
				rows, err := s.ListFailed(cmd.Context(), after, limit)
				if err != nil {
					return err
				}
				for _, r := range rows {
					out.Failed = append(out.Failed, failedRow{
						ID: r.ID, UUID: r.UUID, Topic: r.Topic, PartitionKey: r.PartitionKey,
						Attempts: r.Attempts, CreatedAt: r.CreatedAt.UTC(), FailedAt: r.FailedAt.UTC(), LastError: r.LastError,
					})
				}
				if len(rows) == limit {
					out.NextAfter = rows[len(rows)-1].ID
				}
				return nil
			})
			if err != nil {
				return err
			}
			return o.print(cmd, out, func(p *printer) {
				if len(out.Failed) == 0 {
					p.linef("no failed events in %s", out.Table)
					return
				}
				tw := p.table("ID", "TOPIC", "KEY", "ATTEMPTS", "FAILED AT", "LAST ERROR")
				for _, r := range out.Failed {
					tw.row(r.ID, r.Topic, r.PartitionKey, r.Attempts, r.FailedAt.Format(time.RFC3339), oneLine(r.LastError, 80))
				}
				tw.flush()
				if out.NextAfter != 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "more failed events may follow: txoutbox failed list --after %d\n", out.NextAfter)
				}
			})
		}),
	}
	cmd.Flags().IntVar(&limit, "limit", 50, "most rows to list")
	cmd.Flags().Int64Var(&after, "after", 0, "list rows with an ID greater than this (paging)")
	return cmd
}

type failedListOutput struct {
	Table  string      `json:"table"`
	Failed []failedRow `json:"failed"`
	// NextAfter is the --after of the next page, 0 on the last page.
	NextAfter int64 `json:"next_after,omitempty"`
}

type failedRow struct {
	ID           int64     `json:"id"`
	UUID         string    `json:"uuid"`
	Topic        string    `json:"topic"`
	PartitionKey string    `json:"partition_key"`
	Attempts     int       `json:"attempts"`
	CreatedAt    time.Time `json:"created_at"`
	FailedAt     time.Time `json:"failed_at"`
	LastError    string    `json:"last_error"`
}

// oneLine puts s on one line, cut to at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// parseIDs parses row IDs given as arguments.
func parseIDs(args []string) ([]int64, error) {
	ids := make([]int64, 0, len(args))
	for _, a := range args {
		for _, part := range strings.Split(a, ",") {
			if part == "" {
				continue
			}
			id, err := strconv.ParseInt(part, 10, 64)
			if err != nil || id <= 0 {
				return nil, usagef("invalid row ID %q (IDs are positive integers, as failed list shows them)", part)
			}
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// selector is what retry and discard act on: the IDs (or UUIDs) given as
// arguments, --all, or --topic.
type selector struct {
	all   bool
	topic string
	// hasTopic is false when the command has no --topic.
	hasTopic bool
}

// check requires exactly one of args, --all and --topic.
func (sel selector) check(cmd *cobra.Command, args []string, what string) error {
	n := 0
	if len(args) > 0 {
		n++
	}
	if sel.all {
		n++
	}
	if sel.hasTopic && cmd.Flags().Changed("topic") {
		if sel.topic == "" {
			return usagef("--topic needs a topic name, as failed list shows it")
		}
		n++
	}
	if n == 1 {
		return nil
	}
	if sel.hasTopic {
		return usagef("give %s, --all or --topic TOPIC: one of them", what)
	}
	return usagef("give %s or --all, not both or neither", what)
}

// failedChangeOutput is the result of failed retry and failed discard, of
// the same shape with IDs, --all and --topic.
type failedChangeOutput struct {
	Table string `json:"table"`
	// All is set with --all.
	All bool `json:"all"`
	// Topic is --topic, empty without it.
	Topic string `json:"topic"`
	// Requested counts the distinct IDs given, 0 with --all or --topic.
	Requested int `json:"requested"`
	// Requeued (retry) or Discarded (discard) counts the rows changed;
	// the other is absent.
	Requeued  *int64 `json:"requeued,omitempty"`
	Discarded *int64 `json:"discarded,omitempty"`
	// Unmatched lists the IDs given that matched no failed row, never
	// null.
	Unmatched []int64 `json:"unmatched"`
}

// unmatched returns the ids not in changed; both are sorted.
func unmatched[T cmp.Ordered](ids, changed []T) []T {
	out := []T{}
	for _, id := range ids {
		if _, found := slices.BinarySearch(changed, id); !found {
			out = append(out, id)
		}
	}
	return out
}

// unmatchedError reports the IDs (or UUIDs: noun) that matched no row
// (rows) after the others were changed (verb), nil when all matched.
func unmatchedError[T any](unmatched []T, requested int, noun, rows, why, verb string) error {
	if len(unmatched) == 0 {
		return nil
	}
	list := make([]string, len(unmatched))
	for i, u := range unmatched {
		list[i] = fmt.Sprint(u)
	}
	if len(unmatched) == requested {
		if requested > 1 {
			noun += "s"
		}
		return notFoundf("%s %s matched no %s (%s); nothing was %s", noun, strings.Join(list, ", "), rows, why, verb)
	}
	return notFoundf("%d of %d %ss matched no %s (%s): %s; %s the other %d",
		len(unmatched), requested, noun, rows, why, strings.Join(list, ", "), verb, requested-len(unmatched))
}

// ofTopic describes the selection for people: " of topic T" or "".
func ofTopic(topic string) string {
	if topic == "" {
		return ""
	}
	return fmt.Sprintf(" of topic %s", topic)
}

const failedChangeJSON = `With --json it prints, whether given IDs, --all or --topic:

  {"table": "txoutbox_outbox", "all": false, "topic": "", "requested": 3,
   "%s": 2, "unmatched": [4711]}

"requested" counts the distinct IDs given (0 with --all or --topic),
"unmatched" lists those that matched no failed row ([] with --all or
--topic).`

// failedChange is what failed retry or failed discard does to the store.
type failedChange struct {
	verb, to string // "requeued", "in"; "discarded", "from"
	all      func(s *gormstore.Store, ctx context.Context) (int64, error)
	topic    func(s *gormstore.Store, ctx context.Context, topic string) (int64, error)
	ids      func(s *gormstore.Store, ctx context.Context, ids ...int64) ([]int64, error)
}

// changeFailed runs retry or discard on the rows sel and args select: the
// IDs given, --all, or --topic.
func (o *options) changeFailed(cmd *cobra.Command, args []string, sel selector, op failedChange) error {
	if err := sel.check(cmd, args, "row IDs"); err != nil {
		return err
	}
	ids, err := parseIDs(args)
	if err != nil {
		return err
	}
	if len(args) > 0 && len(ids) == 0 {
		return usagef("no row IDs given")
	}
	n := new(int64)
	out := failedChangeOutput{All: sel.all, Topic: sel.topic, Requested: len(ids), Unmatched: []int64{}}
	if op.verb == "requeued" {
		out.Requeued = n
	} else {
		out.Discarded = n
	}
	ctx := cmd.Context()
	err = o.withStore(ctx, func(s *gormstore.Store) error {
		out.Table = s.Table()
		var err error
		switch {
		case sel.all:
			*n, err = op.all(s, ctx)
		case sel.topic != "":
			*n, err = op.topic(s, ctx, sel.topic)
		default:
			var changed []int64
			changed, err = op.ids(s, ctx, ids...)
			*n = int64(len(changed))
			out.Unmatched = unmatched(ids, changed)
		}
		return err
	})
	if err != nil {
		return err
	}
	if err := o.print(cmd, out, func(p *printer) {
		p.linef("%s %d failed events%s %s %s", op.verb, *n, ofTopic(out.Topic), op.to, out.Table)
	}); err != nil {
		return err
	}
	return unmatchedError(out.Unmatched, out.Requested, "ID", "failed event", "wrong ID, or already retried, discarded or delivered", op.verb)
}

func failedRetryCmd(o *options, run runWrapper) *cobra.Command {
	sel := selector{hasTopic: true}
	cmd := &cobra.Command{
		Use:   "retry (ID... | --all | --topic TOPIC)",
		Short: "Make failed events pending again, attempts reset (fix the cause first)",
		Long: `Make the failed (parked) rows with the given IDs, all of them with --all, or
those of one topic with --topic, pending again with attempts reset to 0. The
forwarder retries them, and their partition keys flow again in order.

An ID that is not a parked row (wrong ID, or already retried, discarded or
delivered) is named on stderr, and the command exits with code 3 after
requeueing the others. --all and --topic matching nothing is not an error.

` + fmt.Sprintf(failedChangeJSON, "requeued"),
		Example: `  txoutbox failed retry 17 18
  txoutbox failed retry --topic orders
  txoutbox failed retry --all`,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			return o.changeFailed(cmd, args, sel, failedChange{
				verb: "requeued", to: "in",
				all:   (*gormstore.Store).RequeueAll,
				topic: (*gormstore.Store).RequeueTopic,
				ids:   (*gormstore.Store).RequeueIDs,
			})
		}),
	}
	cmd.Flags().BoolVar(&sel.all, "all", false, "retry every failed event")
	cmd.Flags().StringVar(&sel.topic, "topic", "", "retry every failed event of this topic")
	return cmd
}

func failedDiscardCmd(o *options, run runWrapper) *cobra.Command {
	sel := selector{hasTopic: true}
	cmd := &cobra.Command{
		Use:   "discard (ID... | --all | --topic TOPIC)",
		Short: "Delete failed events: they are never published, their keys flow on",
		Long: `Delete the failed (parked) rows with the given IDs, all of them with --all, or
those of one topic with --topic. Their events are never published; the later
rows of their partition keys flow again. Only parked rows are deleted, never
pending or delivered ones.

An ID that is not a parked row (wrong ID, or already retried, discarded or
delivered) is named on stderr, and the command exits with code 3 after
discarding the others. --all and --topic matching nothing is not an error.

` + fmt.Sprintf(failedChangeJSON, "discarded"),
		Example: `  txoutbox failed discard 17 18
  txoutbox failed discard --topic invoices
  txoutbox failed discard --all`,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			return o.changeFailed(cmd, args, sel, failedChange{
				verb: "discarded", to: "from",
				all:   (*gormstore.Store).DiscardAll,
				topic: (*gormstore.Store).DiscardTopic,
				ids:   (*gormstore.Store).DiscardIDs,
			})
		}),
	}
	cmd.Flags().BoolVar(&sel.all, "all", false, "discard every failed event")
	cmd.Flags().StringVar(&sel.topic, "topic", "", "discard every failed event of this topic")
	return cmd
}

func purgeCmd(o *options, run runWrapper) *cobra.Command {
	var deliveredBefore, inboxOlderThan durationFlag
	var batch int
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "purge --delivered-before DURATION [--inbox-older-than DURATION] [--dry-run]",
		Short: "Delete delivered outbox rows and old inbox rows, in small batches",
		Long: `Delete outbox rows delivered more than --delivered-before ago (they exist only
with gormstore.Config.KeepDelivered; 0 deletes every delivered row), and inbox
rows received more than --inbox-older-than ago, --batch-size rows per
statement. Pending and failed rows are never deleted. Safe while the
application runs, also next to retention.Cleaner on other instances.
--dry-run counts the rows that would be deleted now, and deletes nothing.

Durations: Go syntax (90m, 36h) plus days (7d, 1d12h).

With --json it prints, with and without --dry-run (a table is absent when its
flag is not given):

  {"dry_run": false,
   "outbox": {"table": "txoutbox_outbox", "older_than": "72h0m0s", "deleted": 48210},
   "inbox": {"table": "txoutbox_inbox", "older_than": "720h0m0s", "deleted": 9120}}

With --dry-run "deleted" counts the rows that would be deleted.`,
		Example: `  txoutbox purge --delivered-before 72h
  txoutbox purge --delivered-before 7d --inbox-older-than 30d --dry-run
  txoutbox purge --delivered-before 7d --inbox-older-than 30d`,
		Args: cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			if !deliveredBefore.set && !inboxOlderThan.set {
				return usagef("nothing to purge: give --delivered-before, --inbox-older-than, or both")
			}
			if inboxOlderThan.set && inboxOlderThan.d <= 0 {
				return usagef("--inbox-older-than %v must be positive: inbox rows guard against redelivered duplicates", inboxOlderThan.d)
			}
			if batch <= 0 || batch > retention.MaxBatchSize {
				return usagef("--batch-size %d is out of range (1 to %d)", batch, retention.MaxBatchSize)
			}
			out := purgeOutput{DryRun: dryRun}
			err := o.withDB(cmd.Context(), false, func(db *gorm.DB) error {
				ctx := cmd.Context()
				var (
					s   *gormstore.Store
					in  *inbox.Inbox
					err error
				)
				if deliveredBefore.set {
					if s, err = gormstore.New(db, gormstore.Config{Table: o.table}); err != nil {
						return err
					}
				}
				if inboxOlderThan.set {
					if in, err = inbox.New(db, inbox.Config{Table: o.inboxTable}); err != nil {
						return err
					}
				}
				if s != nil {
					var n int64
					if dryRun {
						n, err = s.CountDelivered(ctx, deliveredBefore.d)
					} else {
						n, err = purgeOutbox(ctx, s, deliveredBefore.d, batch)
					}
					out.Outbox = &purgeTable{Table: s.Table(), OlderThan: deliveredBefore.d.String(), Deleted: n}
					if err != nil {
						return hintMissingTable(err)
					}
				}
				if in != nil {
					var n int64
					if dryRun {
						n, err = in.CountCleanup(ctx, inboxOlderThan.d)
					} else {
						n, err = in.Cleanup(ctx, inboxOlderThan.d, batch)
					}
					out.Inbox = &purgeTable{Table: in.Table(), OlderThan: inboxOlderThan.d.String(), Deleted: n}
					if err != nil {
						return hintMissingTable(err)
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			return o.print(cmd, out, func(p *printer) {
				verb := "deleted"
				if dryRun {
					verb = "dry run: would delete"
				}
				if t := out.Outbox; t != nil {
					p.linef("%s %d delivered rows from %s (delivered more than %s ago)", verb, t.Deleted, t.Table, t.OlderThan)
				}
				if t := out.Inbox; t != nil {
					p.linef("%s %d inbox rows from %s (received more than %s ago)", verb, t.Deleted, t.Table, t.OlderThan)
				}
			})
		}),
	}
	cmd.Flags().Var(&deliveredBefore, "delivered-before", "delete outbox rows delivered more than this long ago (0: all delivered rows)")
	cmd.Flags().Var(&inboxOlderThan, "inbox-older-than", "delete inbox rows received more than this long ago")
	cmd.Flags().IntVar(&batch, "batch-size", retention.DefaultBatchSize, "rows deleted per statement")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "count what would be deleted, delete nothing")
	return cmd
}

// purgeOutbox deletes due delivered rows batch by batch.
func purgeOutbox(ctx context.Context, s *gormstore.Store, olderThan time.Duration, batch int) (int64, error) {
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := s.PurgeDeliveredBatch(ctx, olderThan, batch)
		total += n
		if err != nil || n < int64(batch) {
			return total, err
		}
	}
}

type purgeOutput struct {
	// DryRun is set with --dry-run: Deleted counts what would be deleted.
	DryRun bool        `json:"dry_run"`
	Outbox *purgeTable `json:"outbox,omitempty"`
	Inbox  *purgeTable `json:"inbox,omitempty"`
}

type purgeTable struct {
	Table     string `json:"table"`
	OlderThan string `json:"older_than"`
	Deleted   int64  `json:"deleted"`
}

// durationFlag is a duration flag that also takes days ("7d", "1d12h")
// and remembers whether it was given.
type durationFlag struct {
	d   time.Duration
	set bool
}

func (f *durationFlag) String() string {
	if !f.set {
		return ""
	}
	return f.d.String()
}

func (f *durationFlag) Type() string { return "duration" }

func (f *durationFlag) Set(s string) error {
	d, err := parseDuration(s)
	if err != nil {
		return err
	}
	f.d, f.set = d, true
	return nil
}

// parseDuration parses a non-negative Go duration with an optional
// leading number of days: "36h", "7d", "1d12h".
func parseDuration(s string) (time.Duration, error) {
	orig := s
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseUint(s[:i], 10, 16)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q (use 90m, 36h, 7d or 1d12h)", orig)
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("invalid duration %q (use 90m, 36h, 7d or 1d12h)", orig)
	}
	return days + d, nil
}
