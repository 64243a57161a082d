package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers/inbox"
)

// Exit codes of Main.
const (
	// ExitOK: the command succeeded.
	ExitOK = 0
	// ExitFailure: a runtime failure, such as an unreachable database or a
	// failed statement.
	ExitFailure = 1
	// ExitUsage: an unknown command, a bad flag or argument, an invalid
	// database URL or table name; nothing was changed.
	ExitUsage = 2
	// ExitNotFound: a row ID or message UUID given matched nothing: "show"
	// found no such failed row, or "retry" or "discard" changed the rows
	// that matched and names the ones that did not.
	ExitNotFound = 3
)

// EnvDatabaseURL is the environment variable read when --database-url is
// not given.
const EnvDatabaseURL = "DATABASE_URL"

// DefaultConnectTimeout bounds connecting to the database.
const DefaultConnectTimeout = 5 * time.Second

// usageError marks an error as the user's: Main exits with ExitUsage.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// notFoundError marks an error as an ID or UUID that matched nothing:
// Main exits with ExitNotFound.
type notFoundError struct{ err error }

func (e notFoundError) Error() string { return e.err.Error() }
func (e notFoundError) Unwrap() error { return e.err }

func notFoundf(format string, args ...any) error {
	return notFoundError{fmt.Errorf(format, args...)}
}

// options are the global flags.
type options struct {
	databaseURL    string
	table          string
	inboxTable     string
	json           bool
	connectTimeout time.Duration
	getenv         func(string) string
}

// Main runs the command line args (without the program name), writing
// results to stdout and errors to stderr, and returns the exit code:
// ExitOK, ExitFailure, ExitUsage or ExitNotFound. getenv reads the environment
// (os.Getenv); ctx cancels a running command.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	o := &options{getenv: getenv}
	started := false // set when a command's RunE starts: earlier errors are usage errors
	root := newRoot(o, &started)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	code := ExitFailure
	var (
		ue usageError
		nf notFoundError
	)
	switch {
	case !started || errors.As(err, &ue) || errors.Is(err, gormstore.ErrInvalidConfig) || errors.Is(err, inbox.ErrInvalidConfig):
		code = ExitUsage
	case errors.As(err, &nf):
		code = ExitNotFound
	}
	fmt.Fprintf(stderr, "txoutbox: %v\n", err)
	if code == ExitUsage {
		path := "txoutbox"
		if cmd != nil {
			path = cmd.CommandPath()
		}
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", path)
	}
	return code
}

func newRoot(o *options, started *bool) *cobra.Command {
	root := &cobra.Command{
		Use:   "txoutbox",
		Short: "Administer txoutbox outbox and inbox tables",
		Long: `txoutbox administers the outbox table of a txoutbox application (and its inbox
table): create the tables, see what is pending or failed, show, retry or
discard failed events ("failed") and the messages consumers parked ("inbox
failed"), and purge delivered rows.

The database is PostgreSQL (postgres://user:pass@host:5432/db?sslmode=disable),
MySQL or MariaDB (mysql://user:pass@host:3306/db), or a SQLite file (a path,
file:path.db, or sqlite:///path.db), from --database-url or the DATABASE_URL
environment variable.

With --json every command prints one JSON document, of the same shape whatever
its flags; "txoutbox COMMAND --help" describes it.

Exit codes: 0 ok, 1 runtime failure (database unreachable, statement failed),
2 usage error (unknown command, bad flag or argument, invalid URL or table;
nothing was changed), 3 an ID or UUID given matched nothing (show found no
such row; retry and discard changed the others and name the unmatched ones).`,
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(cmd.ErrOrStderr())
			_ = cmd.Help()
			return usagef("missing command")
		},
	}
	root.Version = readBuildVersion().String()
	root.SetVersionTemplate("{{.Version}}\n")
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	f := root.PersistentFlags()
	f.StringVar(&o.databaseURL, "database-url", "", "PostgreSQL or MySQL URL, or SQLite file (default $"+EnvDatabaseURL+")")
	f.StringVar(&o.table, "table", gormstore.DefaultTable, "outbox table, optionally qualified: schema.table on PostgreSQL, database.table on MySQL")
	f.StringVar(&o.inboxTable, "inbox-table", inbox.DefaultTable, "inbox table, optionally qualified like --table")
	f.BoolVar(&o.json, "json", false, "print JSON instead of a table")
	f.DurationVar(&o.connectTimeout, "connect-timeout", DefaultConnectTimeout, "give up connecting to the database after this long")

	run := func(f func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			*started = true
			return f(cmd, args)
		}
	}
	root.AddCommand(
		migrateCmd(o, run),
		statusCmd(o, run),
		failedCmd(o, run),
		inboxCmd(o, run),
		purgeCmd(o, run),
		versionCmd(o, run),
	)
	return root
}

// runWrapper marks a command's RunE as started.
type runWrapper = func(func(*cobra.Command, []string) error) func(*cobra.Command, []string) error

// connectError describes a failure to reach the database.
func connectError(target string, err error) error {
	msg := err.Error()
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "timeout") {
		return fmt.Errorf("cannot reach database %s within the connect timeout (--connect-timeout): %w", target, err)
	}
	return fmt.Errorf("cannot reach database %s: %w", target, err)
}
