package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"gorm.io/gorm"
)

// withInbox opens the inbox of the global flags.
func (o *options) withInbox(ctx context.Context, f func(in *inbox.Inbox) error) error {
	return o.withDB(ctx, false, func(db *gorm.DB) error {
		in, err := inbox.New(db, inbox.Config{Table: o.inboxTable})
		if err != nil {
			return err
		}
		return hintMissingTable(f(in))
	})
}

func inboxCmd(o *options, run runWrapper) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inbox",
		Short: "Consumer failures: list, show, retry or discard messages in the inbox's failed table",
		RunE: run(func(cmd *cobra.Command, args []string) error {
			return usagef("missing command for %q (use failed)", cmd.CommandPath())
		}),
	}
	failed := &cobra.Command{
		Use:   "failed",
		Short: "List, show, retry or discard the messages consumers parked",
		Long: `An inbox.Consumer records a message it could not process (after MaxAttempts
failures, at once when it cannot be decoded or carries an unknown event) in the
inbox's failed table, status failed, and acks it. Under the default key policy
the later messages of its partition key are recorded behind it, status held.
"retry" marks failed messages for the running consumer, which processes them
again within its redrive poll (1s by default), then the held ones behind them,
in order; "discard" deletes them and lets their keys go on.`,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q for %q (use list, show, retry or discard)", args[0], cmd.CommandPath())
			}
			return usagef("missing command for %q (use list, show, retry or discard)", cmd.CommandPath())
		}),
	}
	failed.AddCommand(inboxListCmd(o, run), inboxShowCmd(o, run), inboxRetryCmd(o, run), inboxDiscardCmd(o, run))
	cmd.AddCommand(failed)
	return cmd
}

type inboxFailedRow struct {
	ID           int64     `json:"id"`
	Consumer     string    `json:"consumer"`
	UUID         string    `json:"uuid"`
	Topic        string    `json:"topic"`
	PartitionKey string    `json:"partition_key"`
	Status       string    `json:"status"`
	Attempts     int       `json:"attempts"`
	FailedAt     time.Time `json:"failed_at"`
	Error        string    `json:"error"`
}

type inboxListOutput struct {
	Table  string           `json:"table"`
	Failed []inboxFailedRow `json:"failed"`
	// NextAfter is the --after of the next page, 0 on the last page.
	NextAfter int64 `json:"next_after,omitempty"`
}

func inboxListCmd(o *options, run runWrapper) *cobra.Command {
	var (
		consumer string
		limit    int
		after    int64
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the failed table's messages, oldest first, with their error",
		Example: `  txoutbox inbox failed list
  txoutbox inbox failed list --consumer orders.read_model --limit 100 --after 4711`,
		Args: cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			if limit <= 0 || limit > maxListLimit {
				return usagef("--limit %d is out of range (1 to %d)", limit, maxListLimit)
			}
			if after < 0 {
				return usagef("--after %d must not be negative", after)
			}
			out := inboxListOutput{Failed: []inboxFailedRow{}}
			err := o.withInbox(cmd.Context(), func(in *inbox.Inbox) error {
				out.Table = in.FailedTable()
				rows, err := in.ListFailed(cmd.Context(), consumer, after, limit)
				if err != nil {
					return err
				}
				for _, r := range rows {
					out.Failed = append(out.Failed, inboxFailedRow{
						ID: r.ID, Consumer: r.Consumer, UUID: r.UUID, Topic: r.Topic, PartitionKey: r.PartitionKey,
						Status: string(r.Status), Attempts: r.Attempts, FailedAt: r.FailedAt.UTC(), Error: r.Error,
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
					p.linef("no failed messages in %s", out.Table)
					return
				}
				tw := p.table("ID", "CONSUMER", "UUID", "TOPIC", "KEY", "STATUS", "ATTEMPTS", "FAILED AT", "ERROR")
				for _, r := range out.Failed {
					tw.row(r.ID, r.Consumer, r.UUID, r.Topic, r.PartitionKey, r.Status, r.Attempts, r.FailedAt.Format(time.RFC3339), oneLine(r.Error, 80))
				}
				tw.flush()
				if out.NextAfter != 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "more failed messages may follow: txoutbox inbox failed list --after %d\n", out.NextAfter)
				}
			})
		}),
	}
	cmd.Flags().StringVar(&consumer, "consumer", "", "list only this consumer's messages")
	cmd.Flags().IntVar(&limit, "limit", 50, "most rows to list")
	cmd.Flags().Int64Var(&after, "after", 0, "list rows with an ID greater than this (paging)")
	return cmd
}

// inboxChangeOutput is the result of inbox failed retry and discard, of
// the same shape with UUIDs and --all.
type inboxChangeOutput struct {
	Table    string `json:"table"`
	Consumer string `json:"consumer"`
	// All is set with --all.
	All bool `json:"all"`
	// Requested counts the distinct UUIDs given, 0 with --all.
	Requested int `json:"requested"`
	// Marked (retry) or Discarded (discard) counts the rows changed; the
	// other is absent.
	Marked    *int64 `json:"marked,omitempty"`
	Discarded *int64 `json:"discarded,omitempty"`
	// Unmatched lists the UUIDs given that matched no row, never null.
	Unmatched []string `json:"unmatched"`
}

// parseUUIDs returns the message UUIDs given as arguments (also
// comma-separated), sorted and without duplicates.
func parseUUIDs(args []string) []string {
	uuids := make([]string, 0, len(args))
	for _, a := range args {
		for _, part := range strings.Split(a, ",") {
			if part = strings.TrimSpace(part); part != "" {
				uuids = append(uuids, part)
			}
		}
	}
	slices.Sort(uuids)
	return slices.Compact(uuids)
}

const inboxChangeJSON = `With --json it prints, whether given UUIDs or --all:

  {"table": "txoutbox_inbox_failed", "consumer": "billing", "all": false,
   "requested": 2, "%s": 1, "unmatched": ["0190f5b2-7c1e-7000-8000-000000000009"]}

"requested" counts the distinct UUIDs given (0 with --all), "unmatched" lists
those that matched no row ([] with --all).`

func inboxRetryCmd(o *options, run runWrapper) *cobra.Command {
	var (
		consumer string
		sel      selector
	)
	cmd := &cobra.Command{
		Use:   "retry --consumer NAME (UUID... | --all)",
		Short: "Mark a consumer's failed messages for the running consumer to process again",
		Long: `Mark the consumer's failed messages with the given UUIDs, or all of them with
--all, for retry. The running consumer of that name processes them again within
its redrive poll (1s by default), then the held messages behind them, in order.
A message that fails again is failed again, with one more attempt.

A UUID that is not a failed message of the consumer (wrong UUID or consumer,
held, or already marked or discarded) is named on stderr, and the command exits
with code 3 after marking the others. --all matching nothing is not an error.

` + fmt.Sprintf(inboxChangeJSON, "marked"),
		Example: `  txoutbox inbox failed retry --consumer orders.read_model 0190f5b2-7c1e-7000-8000-000000000001
  txoutbox inbox failed retry --consumer orders.read_model --all`,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if consumer == "" {
				return usagef("--consumer is required (the consumer's name, as inbox failed list shows it)")
			}
			if err := sel.check(cmd, args, "message UUIDs"); err != nil {
				return err
			}
			uuids := parseUUIDs(args)
			if len(args) > 0 && len(uuids) == 0 {
				return usagef("no message UUIDs given")
			}
			out := inboxChangeOutput{Consumer: consumer, All: sel.all, Requested: len(uuids), Marked: new(int64), Unmatched: []string{}}
			err := o.withInbox(cmd.Context(), func(in *inbox.Inbox) error {
				out.Table = in.FailedTable()
				var err error
				if sel.all {
					*out.Marked, err = in.RetryAll(cmd.Context(), consumer)
					return err
				}
				changed, err := in.RetryUUIDs(cmd.Context(), consumer, uuids...)
				*out.Marked = int64(len(changed))
				out.Unmatched = unmatched(uuids, changed)
				return err
			})
			if err != nil {
				return err
			}
			if err := o.print(cmd, out, func(p *printer) {
				p.linef("marked %d failed messages of %s for retry in %s; the running consumer picks them up within its redrive poll (1s by default)", *out.Marked, consumer, out.Table)
			}); err != nil {
				return err
			}
			return unmatchedError(out.Unmatched, out.Requested, "UUID", "failed message of "+consumer,
				"wrong UUID or consumer, held, or already marked or discarded", "marked")
		}),
	}
	cmd.Flags().StringVar(&consumer, "consumer", "", "the consumer whose messages to retry (required)")
	cmd.Flags().BoolVar(&sel.all, "all", false, "retry every failed message of the consumer")
	return cmd
}

func inboxDiscardCmd(o *options, run runWrapper) *cobra.Command {
	var consumer string
	cmd := &cobra.Command{
		Use:   "discard --consumer NAME UUID...",
		Short: "Delete a consumer's failed messages: never processed, their keys go on",
		Long: `Delete the consumer's messages with the given UUIDs from the failed table. They
are never processed (their inbox rows stay, so a redelivery is acked as a
duplicate); the held messages behind them are processed by the running
consumer, in order.

A UUID that is not in the failed table for the consumer (wrong UUID or
consumer, or already processed or discarded) is named on stderr, and the
command exits with code 3 after discarding the others.

With --json it prints:

  {"table": "txoutbox_inbox_failed", "consumer": "billing", "all": false,
   "requested": 2, "discarded": 1, "unmatched": ["0190f5b2-7c1e-7000-8000-000000000009"]}

"requested" counts the distinct UUIDs given, "unmatched" lists those that
matched no row. "all" is always false: the key is there so that the shape is
the one retry prints.`,
		Example: `  txoutbox inbox failed discard --consumer orders.read_model 0190f5b2-7c1e-7000-8000-000000000001`,
		Args:    cobra.MinimumNArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if consumer == "" {
				return usagef("--consumer is required (the consumer's name, as inbox failed list shows it)")
			}
			uuids := parseUUIDs(args)
			if len(uuids) == 0 {
				return usagef("no message UUIDs given")
			}
			out := inboxChangeOutput{Consumer: consumer, Requested: len(uuids), Discarded: new(int64), Unmatched: []string{}}
			err := o.withInbox(cmd.Context(), func(in *inbox.Inbox) error {
				out.Table = in.FailedTable()
				changed, err := in.DiscardUUIDs(cmd.Context(), consumer, uuids...)
				*out.Discarded = int64(len(changed))
				out.Unmatched = unmatched(uuids, changed)
				return err
			})
			if err != nil {
				return err
			}
			if err := o.print(cmd, out, func(p *printer) {
				p.linef("discarded %d failed messages of %s from %s", *out.Discarded, consumer, out.Table)
			}); err != nil {
				return err
			}
			return unmatchedError(out.Unmatched, out.Requested, "UUID", "failed message of "+consumer,
				"wrong UUID or consumer, or already processed or discarded", "discarded")
		}),
	}
	cmd.Flags().StringVar(&consumer, "consumer", "", "the consumer whose messages to discard (required)")
	return cmd
}
