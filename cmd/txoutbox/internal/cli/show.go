package cli

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers/inbox"
)

// payloadOutput is a payload in JSON: its size, and its bytes as text when
// they are valid UTF-8, else in base64.
type payloadOutput struct {
	PayloadSize int `json:"payload_size"`
	// PayloadEncoding is "utf-8" or "base64".
	PayloadEncoding string `json:"payload_encoding"`
	Payload         string `json:"payload"`
}

func newPayload(b []byte) payloadOutput {
	if utf8.Valid(b) {
		return payloadOutput{PayloadSize: len(b), PayloadEncoding: "utf-8", Payload: string(b)}
	}
	return payloadOutput{PayloadSize: len(b), PayloadEncoding: "base64", Payload: base64.StdEncoding.EncodeToString(b)}
}

// failedShowOutput is failed show's JSON: the list's row, whole.
type failedShowOutput struct {
	Table string `json:"table"`
	failedRow
	// Metadata is the stored metadata; null, with MetadataRaw set, when it
	// is not a JSON object of strings.
	Metadata    map[string]string `json:"metadata"`
	MetadataRaw string            `json:"metadata_raw,omitempty"`
	payloadOutput
}

// parseID parses the one row ID of a show command.
func parseID(arg string) (int64, error) {
	id, err := strconv.ParseInt(arg, 10, 64)
	if err != nil || id <= 0 {
		return 0, usagef("invalid row ID %q (IDs are positive integers, as the list's ID column shows them)", arg)
	}
	return id, nil
}

// showField is one line of a show command's text output.
type showField struct{ name, value string }

// printFields writes name: value lines, aligned, then the long texts
// (error, payload) each under its name, indented.
func printFields(p *printer, fields []showField, long ...showField) {
	width := 0
	for _, f := range fields {
		width = max(width, len(f.name))
	}
	for _, f := range fields {
		p.linef("%-*s  %s", width+1, f.name+":", f.value)
	}
	for _, f := range long {
		p.linef("%s:", f.name)
		for _, line := range strings.Split(strings.TrimRight(f.value, "\n"), "\n") {
			p.linef("  %s", line)
		}
	}
}

// metadataText is metadata for people: sorted key=value pairs.
func metadataText(md map[string]string) string {
	if len(md) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(md))
	for _, k := range slices.Sorted(maps.Keys(md)) {
		parts = append(parts, k+"="+strconv.Quote(md[k]))
	}
	return strings.Join(parts, " ")
}

// payloadFields returns the payload's size line and, with show, the
// payload itself as a long field.
func payloadFields(po payloadOutput, show bool) (showField, []showField) {
	size := showField{"payload", strconv.Itoa(po.PayloadSize) + " bytes"}
	if !show {
		size.value += " (--payload prints it)"
		return size, nil
	}
	name := "payload"
	if po.PayloadEncoding == "base64" {
		name = "payload (base64: not UTF-8 text)"
	}
	return size, []showField{{name, po.Payload}}
}

func failedShowCmd(o *options, run runWrapper) *cobra.Command {
	var payload bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show one failed event whole: its metadata, payload size and whole last error",
		Long: `Show the failed (parked) row with the given ID: ID, UUID, topic, partition key,
attempts, when it was written and parked, its metadata, the size of its payload
(the payload itself with --payload), and its whole last error, which "failed
list" cuts to one line.

An ID that is not a parked row (wrong ID, or already retried, discarded or
delivered) exits with code 3.

With --json it prints the fields of a "failed list" row plus
"metadata" (an object of strings), "payload_size", "payload_encoding"
("utf-8", or "base64" when the payload is not UTF-8 text) and "payload":

  {"table": "txoutbox_outbox", "id": 17, "uuid": "…", "topic": "orders",
   "partition_key": "customer-17", "attempts": 10, "created_at": "…",
   "failed_at": "…", "last_error": "…", "metadata": {"partition_key": "customer-17"},
   "payload_size": 42, "payload_encoding": "utf-8", "payload": "{\"order_id\":\"o-17\"}"}`,
		Example: `  txoutbox failed show 17
  txoutbox failed show 17 --payload
  txoutbox failed show 17 --json | jq -r .last_error`,
		Args: cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			var out failedShowOutput
			err = o.withStore(cmd.Context(), func(s *gormstore.Store) error {
				out.Table = s.Table()
				f, err := s.GetFailed(cmd.Context(), id)
				if errors.Is(err, gormstore.ErrNotFound) {
					return notFoundf("no failed event with ID %d in %s (wrong ID, or already retried, discarded or delivered)", id, s.Table())
				}
				if err != nil {
					return err
				}
				out.failedRow = failedRow{
					ID: f.ID, UUID: f.UUID, Topic: f.Topic, PartitionKey: f.PartitionKey,
					Attempts: f.Attempts, CreatedAt: f.CreatedAt.UTC(), FailedAt: f.FailedAt.UTC(), LastError: f.LastError,
				}
				if err := json.Unmarshal([]byte(f.Metadata), &out.Metadata); err != nil {
					out.Metadata, out.MetadataRaw = nil, f.Metadata
				}
				out.payloadOutput = newPayload(f.Payload)
				return nil
			})
			if err != nil {
				return err
			}
			return o.print(cmd, out, func(p *printer) {
				md := metadataText(out.Metadata)
				if out.MetadataRaw != "" {
					md = out.MetadataRaw + " (not a JSON object of strings)"
				}
				size, long := payloadFields(out.payloadOutput, payload)
				printFields(p, []showField{
					{"id", strconv.FormatInt(out.ID, 10)},
					{"uuid", out.UUID},
					{"topic", out.Topic},
					{"partition key", orDash(out.PartitionKey)},
					{"attempts", strconv.Itoa(out.Attempts)},
					{"created at", out.CreatedAt.Format(time.RFC3339Nano)},
					{"failed at", out.FailedAt.Format(time.RFC3339Nano)},
					{"metadata", md},
					size,
				}, append([]showField{{"last error", orDash(out.LastError)}}, long...)...)
			})
		}),
	}
	cmd.Flags().BoolVar(&payload, "payload", false, "also print the payload (always in --json)")
	return cmd
}

// orDash shows an empty string as "-".
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// inboxShowOutput is inbox failed show's JSON: the list's row, whole.
type inboxShowOutput struct {
	Table string `json:"table"`
	inboxFailedRow
	Metadata map[string]string `json:"metadata"`
	payloadOutput
}

func inboxShowCmd(o *options, run runWrapper) *cobra.Command {
	var (
		consumer string
		payload  bool
	)
	cmd := &cobra.Command{
		Use:   "show ID [--consumer NAME]",
		Short: "Show one message of the failed table whole: metadata, payload size, whole error",
		Long: `Show the failed table's row with the given ID (the ID column of "inbox failed
list"): consumer, UUID, topic, partition key, status, attempts, when it failed,
its metadata, the size of its payload (the payload itself with --payload) and
its whole error, which the list cuts to one line. With --consumer, the row must
be that consumer's.

An ID that matches no row (wrong ID or consumer, or already processed or
discarded) exits with code 3.

With --json it prints the fields of an "inbox failed list" row plus
"metadata", "payload_size", "payload_encoding" ("utf-8" or "base64") and
"payload", as "failed show" does.`,
		Example: `  txoutbox inbox failed show 3
  txoutbox inbox failed show 3 --consumer billing --payload`,
		Args: cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			var out inboxShowOutput
			err = o.withInbox(cmd.Context(), func(in *inbox.Inbox) error {
				out.Table = in.FailedTable()
				rows, err := in.ListFailed(cmd.Context(), consumer, id-1, 1)
				if err != nil {
					return err
				}
				if len(rows) == 0 || rows[0].ID != id {
					of := ""
					if consumer != "" {
						of = " of " + consumer
					}
					return notFoundf("no failed message%s with ID %d in %s (wrong ID or consumer, or already processed or discarded)", of, id, out.Table)
				}
				r := rows[0]
				out.inboxFailedRow = inboxFailedRow{
					ID: r.ID, Consumer: r.Consumer, UUID: r.UUID, Topic: r.Topic, PartitionKey: r.PartitionKey,
					Status: string(r.Status), Attempts: r.Attempts, FailedAt: r.FailedAt.UTC(), Error: r.Error,
				}
				out.Metadata = map[string]string(r.Metadata)
				if out.Metadata == nil {
					out.Metadata = map[string]string{}
				}
				out.payloadOutput = newPayload(r.Payload)
				return nil
			})
			if err != nil {
				return err
			}
			return o.print(cmd, out, func(p *printer) {
				size, long := payloadFields(out.payloadOutput, payload)
				printFields(p, []showField{
					{"id", strconv.FormatInt(out.ID, 10)},
					{"consumer", out.Consumer},
					{"uuid", out.UUID},
					{"topic", out.Topic},
					{"partition key", orDash(out.PartitionKey)},
					{"status", out.Status},
					{"attempts", strconv.Itoa(out.Attempts)},
					{"failed at", out.FailedAt.Format(time.RFC3339Nano)},
					{"metadata", metadataText(out.Metadata)},
					size,
				}, append([]showField{{"error", orDash(out.Error)}}, long...)...)
			})
		}),
	}
	cmd.Flags().StringVar(&consumer, "consumer", "", "the consumer the row must belong to")
	cmd.Flags().BoolVar(&payload, "payload", false, "also print the payload (always in --json)")
	return cmd
}
