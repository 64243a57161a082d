package cli

import (
	"context"
	"fmt"
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
		Short: "Consumer failures: list, retry or discard messages in the inbox's failed table",
		RunE: run(func(cmd *cobra.Command, args []string) error {
			return usagef("missing command for %q (use failed)", cmd.CommandPath())
		}),
	}
	failed := &cobra.Command{
		Use:   "failed",
		Short: "List, retry or discard the messages consumers parked",
		Long: `An inbox.Consumer records a message it could not process (after MaxAttempts
failures, at once when it cannot be decoded or carries an unknown event) in the
inbox's failed table, status failed, and acks it. Under the default key policy
the later messages of its partition key are recorded behind it, status held.
"retry" marks failed messages for the running consumer, which processes them
again within its redrive poll (1s by default), then the held ones behind them,
in order; "discard" deletes them and lets their keys go on.`,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q for %q (use list, retry or discard)", args[0], cmd.CommandPath())
			}
			return usagef("missing command for %q (use list, retry or discard)", cmd.CommandPath())
		}),
	}
	failed.AddCommand(inboxListCmd(o, run), inboxRetryCmd(o, run), inboxDiscardCmd(o, run))
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

func inboxRetryCmd(o *options, run runWrapper) *cobra.Command {
	var (
		consumer string
		all      bool
	)
	cmd := &cobra.Command{
		Use:   "retry --consumer NAME (UUID... | --all)",
		Short: "Mark a consumer's failed messages for the running consumer to process again",
		Long: `Mark the consumer's failed messages with the given UUIDs, or all of them with
--all, for retry. The running consumer of that name processes them again within
its redrive poll (1s by default), then the held messages behind them, in order.
A message that fails again is failed again, with one more attempt.`,
		Example: `  txoutbox inbox failed retry --consumer orders.read_model 0190f5b2-7c1e-7000-8000-000000000001
  txoutbox inbox failed retry --consumer orders.read_model --all`,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if consumer == "" {
				return usagef("--consumer is required (the consumer's name, as inbox failed list shows it)")
			}
			if all == (len(args) > 0) {
				return usagef("give message UUIDs or --all, not both or neither")
			}
			out := changeOutput{All: all, Requested: int64(len(args))}
			err := o.withInbox(cmd.Context(), func(in *inbox.Inbox) error {
				out.Table = in.FailedTable()
				var err error
				if all {
					out.Changed, err = in.RetryAll(cmd.Context(), consumer)
				} else {
					out.Changed, err = in.Retry(cmd.Context(), consumer, args...)
				}
				return err
			})
			if err != nil {
				return err
			}
			return o.print(cmd, out.as("marked"), func(p *printer) {
				p.linef("marked %d failed messages of %s for retry in %s; the running consumer picks them up within its redrive poll (1s by default)", out.Changed, consumer, out.Table)
				out.warnSkippedMessages(cmd)
			})
		}),
	}
	cmd.Flags().StringVar(&consumer, "consumer", "", "the consumer whose messages to retry (required)")
	cmd.Flags().BoolVar(&all, "all", false, "retry every failed message of the consumer")
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
consumer, in order.`,
		Example: `  txoutbox inbox failed discard --consumer orders.read_model 0190f5b2-7c1e-7000-8000-000000000001`,
		Args:    cobra.MinimumNArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if consumer == "" {
				return usagef("--consumer is required (the consumer's name, as inbox failed list shows it)")
			}
			out := changeOutput{Requested: int64(len(args))}
			err := o.withInbox(cmd.Context(), func(in *inbox.Inbox) error {
				out.Table = in.FailedTable()
				var err error
				out.Changed, err = in.Discard(cmd.Context(), consumer, args...)
				return err
			})
			if err != nil {
				return err
			}
			return o.print(cmd, out.as("discarded"), func(p *printer) {
				p.linef("discarded %d failed messages of %s from %s", out.Changed, consumer, out.Table)
				out.warnSkippedMessages(cmd)
			})
		}),
	}
	cmd.Flags().StringVar(&consumer, "consumer", "", "the consumer whose messages to discard (required)")
	return cmd
}

func (c changeOutput) warnSkippedMessages(cmd *cobra.Command) {
	if !c.All && c.Changed < c.Requested {
		fmt.Fprintf(cmd.ErrOrStderr(), "%d of %d UUIDs were not failed messages of the consumer (wrong UUID or consumer, already retried or discarded) and were skipped\n",
			c.Requested-c.Changed, c.Requested)
	}
}
