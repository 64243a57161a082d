package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/txoutbox/txoutbox/brokers"
	"github.com/txoutbox/txoutbox/brokers/amqp"
	"github.com/txoutbox/txoutbox/example_app/internal/app"
	"github.com/txoutbox/txoutbox/example_app/internal/database"
	"github.com/txoutbox/txoutbox/example_app/internal/demo"
	"github.com/txoutbox/txoutbox/example_app/internal/readmodel"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/middleware"
	"gorm.io/gorm"
)

// Exit codes of Main.
const (
	// ExitOK: the service stopped cleanly, or the demo passed.
	ExitOK = 0
	// ExitFailure: a runtime failure (a service cannot be reached, the
	// demo found a problem).
	ExitFailure = 1
	// ExitUsage: bad flags, environment or URLs; nothing was started.
	ExitUsage = 2
)

// ConsumerGroup names the read-model consumer on the broker.
const ConsumerGroup = "orders-read-model"

// connectTimeout bounds connecting to the database and the broker.
const connectTimeout = 5 * time.Second

const usageText = `example_app: an orders service on txoutbox (transactional outbox + inbox).

Usage:
  example_app [flags]         run the service: HTTP API, outbox forwarder, read-model consumer
  example_app demo [flags]    run N orders through an in-process service, check that every
                              event reached the read model exactly once, print a summary

Every flag can also be set by the environment variable in brackets; a flag wins.
Flags may start with - or --. An error names the flag when the value came from
one, the variable otherwise.
With no configuration the service needs nothing installed: SQLite in the data
directory and Watermill's in-process GoChannel.

Flags:
  -addr ADDR            HTTP listen address [HTTP_ADDR] (default 127.0.0.1:8080)
  -database-url URL     [DATABASE_URL] postgres://user:pass@host:5432/db,
                        mysql://user:pass@host:3306/db (MySQL, MariaDB), or a
                        SQLite file: a path (./app.db), file:path.db[?params]
                        or sqlite:///path/file.db (default: SQLite file
                        orders.db in the data directory)
  -broker-url URL       [BROKER_URL] amqp://guest:guest@127.0.0.1:5672/ (RabbitMQ),
                        nats://127.0.0.1:4222 (NATS JetStream), redis://127.0.0.1:6379/0
                        (Redis Streams), kafka://127.0.0.1:9092[,host:port...] (Kafka)
                        (default: gochannel, in process)
  -data-dir DIR         [DATA_DIR] directory of the SQLite file
                        (default %s)
  -topic NAME           [TOPIC] topic of the order events (default "orders"; the
                        demo uses a new topic per run unless this is set)
  -log-level LEVEL      [LOG_LEVEL] debug, info, warn or error (default info;
                        the demo logs warnings only unless this is set)

The demo writes a progress line to stderr every second (every 5 seconds when
stderr is not a terminal), and the summary to stdout.

Demo flags (after "demo"):
  -n N                  orders to place (default %d); each is paid or cancelled
  -concurrency N        clients sending requests at once (default %d)
  -timeout DURATION     how long to wait for the read model to catch up (default %v)
  -keep                 keep the demo's SQLite file and broker topic

Exit codes: 0 ok, 1 failure (a service unreachable, the demo found a problem),
2 bad flags, environment or URL.

Examples:
  go run ./example_app
  curl -s -XPOST localhost:8080/orders -d '{"customer":"ada","amount_cents":1250}'
  curl -s -XPOST localhost:8080/orders/ID/pay ; curl -s localhost:8080/orders/ID
  go run ./example_app demo -n 1000
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/test BROKER_URL=nats://127.0.0.1:4222 go run ./example_app demo
`

// DefaultDataDir is the data directory when DATA_DIR is not set.
func DefaultDataDir() string { return filepath.Join(os.TempDir(), "txoutbox-example") }

// settings are the parsed flags and environment.
type settings struct {
	demo      bool
	addr      string
	addrFrom  string // "--addr", "HTTP_ADDR", or "" for the default
	dbURL     string
	brokerURL string
	dataDir   string
	topic     string
	topicSet  bool
	level     slog.Level
	levelSet  bool

	orders      int
	concurrency int
	timeout     time.Duration
	keep        bool

	db     database.Config
	broker brokers.Config
}

// usageError is a configuration problem: exit code 2.
type usageError struct{ err error }

// Error returns the problem.
func (e usageError) Error() string { return e.err.Error() }

// Unwrap returns the problem.
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// parse reads args and the environment. It returns flag.ErrHelp for -h.
func parse(args []string, getenv func(string) string) (settings, error) {
	var s settings
	if len(args) > 0 && (args[0] == "demo" || args[0] == "serve") {
		s.demo = args[0] == "demo"
		args = args[1:]
	}
	fs := flag.NewFlagSet("example_app", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	fs.StringVar(&s.addr, "addr", env("HTTP_ADDR", "127.0.0.1:8080"), "")
	fs.StringVar(&s.dbURL, "database-url", env("DATABASE_URL", ""), "")
	fs.StringVar(&s.brokerURL, "broker-url", env("BROKER_URL", ""), "")
	fs.StringVar(&s.dataDir, "data-dir", env("DATA_DIR", DefaultDataDir()), "")
	fs.StringVar(&s.topic, "topic", env("TOPIC", ""), "")
	level := fs.String("log-level", env("LOG_LEVEL", ""), "")
	if s.demo {
		fs.IntVar(&s.orders, "n", demo.DefaultOrders, "")
		fs.IntVar(&s.concurrency, "concurrency", demo.DefaultConcurrency, "")
		fs.DurationVar(&s.timeout, "timeout", demo.DefaultTimeout, "")
		fs.BoolVar(&s.keep, "keep", false, "")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return s, err
		}
		return s, usagef("%v (see example_app -h)", err)
	}
	if fs.NArg() > 0 {
		return s, usagef("unexpected argument %q (see example_app -h)", fs.Arg(0))
	}
	// An error names where its value came from: the flag when it was
	// given, the environment variable otherwise.
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	source := func(flagName, envName string) string {
		if given[flagName] {
			return "--" + flagName
		}
		return envName
	}

	var err error
	if s.broker, err = brokers.ParseURL(s.brokerURL); err != nil {
		return s, usagef("%s: %w", source("broker-url", "BROKER_URL"), err)
	}
	if s.db, err = database.ParseURL(s.dbURL, s.dataDir); err != nil {
		if s.dbURL == "" {
			return s, usagef("%s: %w", source("data-dir", "DATA_DIR"), err)
		}
		return s, usagef("%s: %w", source("database-url", "DATABASE_URL"), err)
	}
	s.topicSet = s.topic != ""
	if s.topicSet {
		if err := app.ValidTopic(s.topic); err != nil {
			return s, usagef("%s: %w", source("topic", "TOPIC"), err)
		}
	}
	s.level = slog.LevelInfo
	if *level != "" {
		s.levelSet = true
		if err := s.level.UnmarshalText([]byte(*level)); err != nil {
			return s, usagef("%s %q: use debug, info, warn or error", source("log-level", "LOG_LEVEL"), *level)
		}
	}
	if s.demo {
		if s.orders <= 0 || s.concurrency <= 0 || s.timeout <= 0 {
			return s, usagef("demo: -n, -concurrency and -timeout must be positive")
		}
	} else if _, _, err := net.SplitHostPort(s.addr); err != nil {
		return s, usagef("%s %q: %v", source("addr", "HTTP_ADDR"), s.addr, err)
	}
	switch {
	case given["addr"]:
		s.addrFrom = "--addr"
	case getenv("HTTP_ADDR") != "":
		s.addrFrom = "HTTP_ADDR"
	}
	return s, nil
}

// Main runs the example app with args (without the program name) and the
// environment getenv, and returns the exit code. It stops when ctx ends
// (main cancels it on SIGINT and SIGTERM).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	s, err := parse(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stdout, usageText, DefaultDataDir(), demo.DefaultOrders, demo.DefaultConcurrency, demo.DefaultTimeout)
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "example_app: %v\n", err)
		return ExitUsage
	}
	if s.demo {
		err = runDemo(ctx, s, stdout, stderr)
	} else {
		err = serve(ctx, s, stderr)
	}
	var ue usageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "example_app: %v\n", err)
		return ExitUsage
	default:
		fmt.Fprintf(stderr, "example_app: %v\n", err)
		return ExitFailure
	}
}

func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// connect opens the database and the broker.
func connect(ctx context.Context, s settings, log *slog.Logger) (*gorm.DB, *brokers.Broker, error) {
	db, err := database.Open(ctx, s.db, connectTimeout)
	if err != nil {
		return nil, nil, err
	}
	// The broker may be down: the app starts anyway, takes orders, and
	// relays once the broker answers. Only a bad URL fails here.
	b, err := brokers.OpenConfig(ctx, s.broker, brokers.Options{
		ConsumerGroup:  ConsumerGroup,
		ConnectTimeout: connectTimeout,
		Logger:         log,
		// The read model's consumer orders by key itself and batches:
		// RabbitMQ hands it a window of workers × batch size messages.
		AMQP: amqp.Config{Concurrent: true, Prefetch: inbox.DefaultWorkers * inbox.DefaultBatchSize},
	})
	if err != nil {
		_ = database.Close(db)
		return nil, nil, err
	}
	log.Info("opened", "database", s.db.String(), "broker", s.broker.String(), "broker_connected", b.Health(ctx) == nil)
	return db, b, nil
}

// serve runs the service until ctx ends.
func serve(ctx context.Context, s settings, stderr io.Writer) error {
	log := newLogger(stderr, s.level)
	if s.db.Dialect == database.SQLite && s.dbURL == "" {
		log.Info("data directory: " + filepath.Dir(s.db.Path) + " (set DATA_DIR or DATABASE_URL to change it)")
	}
	db, b, err := connect(ctx, s, log)
	if err != nil {
		return err
	}
	defer database.Close(db)
	defer b.Close()
	a, err := app.New(ctx, app.Config{DB: db, Broker: b, Topic: s.topic, Logger: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		if s.addrFrom == "" {
			return fmt.Errorf("listen on %s: %w (set --addr or HTTP_ADDR)", s.addr, err)
		}
		return fmt.Errorf("listen on %s (from %s): %w", s.addr, s.addrFrom, err)
	}
	base := "http://" + ln.Addr().String()
	log.Info("orders service listening on "+base, "topic", a.Topic(), "consumer", readmodel.Consumer)
	log.Info("try: curl -s -XPOST " + base + `/orders -d '{"customer":"ada","amount_cents":1250}'`)
	err = a.Run(ctx, ln)
	if st, serr := a.Store.Stats(context.WithoutCancel(ctx)); serr == nil {
		log.Info("stopped", "outbox_pending", st.Pending, "outbox_failed", st.Failed)
	}
	return err
}

// runDemo runs the demo on a service of its own and prints the summary.
func runDemo(ctx context.Context, s settings, stdout, stderr io.Writer) error {
	if !s.levelSet {
		s.level = slog.LevelWarn
	}
	log := newLogger(stderr, s.level)
	runID := randomHex(4)
	prefix := "demo-" + runID
	if !s.topicSet {
		s.topic = "orders-demo-" + runID
	}
	ownFile := s.dbURL == ""
	if ownFile {
		// A database file of its own, so a demo never meets a running
		// service's data or locks.
		s.db.Path = filepath.Join(s.dataDir, "demo-"+runID+".db")
	}
	if ownFile && !s.keep {
		// Runs last, also when connecting to the broker failed.
		defer func() {
			for _, suffix := range []string{"", "-wal", "-shm"} {
				_ = os.Remove(s.db.Path + suffix)
			}
		}()
	}
	db, b, err := connect(ctx, s, log)
	if err != nil {
		return err
	}
	defer database.Close(db)
	defer b.Close()
	// A service waits for its broker; the demo measures a round trip
	// through it, so it stops when there is none.
	if err := b.Health(ctx); err != nil {
		return err
	}

	rec := demo.NewRecorder(prefix)
	a, err := app.New(ctx, app.Config{DB: db, Broker: b, Topic: s.topic, Logger: log, AfterCommit: []func(middleware.AfterCommitParams){rec.AfterCommit}})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- a.Run(runCtx, ln) }()

	fmt.Fprintf(stdout, "demo:        %d orders, %d clients, on %s + %s, topic %s\n", s.orders, s.concurrency, s.db, s.broker, s.topic)
	res, err := demo.Run(ctx, a, db, "http://"+ln.Addr().String(), rec, demo.Config{
		Orders: s.orders, Concurrency: s.concurrency, Timeout: s.timeout, Prefix: prefix,
		Progress: stderr, ProgressInterval: progressInterval(stderr),
	})
	stop()
	if rerr := <-runDone; rerr != nil && err == nil {
		err = rerr
	}
	if !s.keep {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), connectTimeout)
		if derr := b.DeleteTopic(dctx, s.topic); derr != nil {
			log.Warn("could not delete the demo topic from the broker", "topic", s.topic, "error", derr)
		}
		cancel()
	}
	if err != nil {
		return err
	}
	res.Print(stdout)
	if !res.OK() {
		return errors.New("demo failed: not every event arrived exactly once in the read model (see above)")
	}
	return nil
}

// progressInterval is the time between the demo's progress lines on w:
// every second on a terminal, every 5 seconds otherwise, so that a log
// shows the run is alive without a line per second.
func progressInterval(w io.Writer) time.Duration {
	if isTerminal(w) {
		return time.Second
	}
	return 5 * time.Second
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Getenv is os.Getenv with surrounding spaces trimmed.
func Getenv(name string) string { return strings.TrimSpace(os.Getenv(name)) }
