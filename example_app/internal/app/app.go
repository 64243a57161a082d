package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/brokers"
	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/example_app/internal/httpapi"
	"github.com/txoutbox/txoutbox/example_app/internal/orders"
	"github.com/txoutbox/txoutbox/example_app/internal/readmodel"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"github.com/txoutbox/txoutbox/retention"
	"gorm.io/gorm"
)

// DefaultTopic is the topic every order event is published to.
const DefaultTopic = "orders"

// ShutdownTimeout bounds each step of the graceful shutdown.
const ShutdownTimeout = 10 * time.Second

// Config configures the app.
type Config struct {
	// DB is the database of the orders, the outbox, the inbox and the read
	// model. Required.
	DB *gorm.DB
	// Broker carries the events from the forwarder to the consumer.
	// Required. The app does not close it.
	Broker *brokers.Broker
	// Topic is the topic of the order events. Optional; default
	// DefaultTopic. Letters, digits, '-' and '_' only, so that it is a valid
	// name on every broker (it names a RabbitMQ queue, a NATS stream, a
	// Redis stream, a Kafka topic).
	Topic string
	// Logger receives the app's logs. Optional; default slog.Default().
	Logger *slog.Logger
	// Forwarder tunes the outbox forwarder. Optional; its Logger defaults
	// to Logger.
	Forwarder outbox.ForwarderConfig
	// AfterCommit hooks run after each command that committed events,
	// before the forwarder is woken. Optional (the demo records commit
	// times with one).
	AfterCommit []func(middleware.AfterCommitParams)
	// Consumer tunes the read-model consumer (Workers, BatchSize,
	// MaxAttempts, StallAfter, ...). Optional; its Name, Topics,
	// Subscriber and Handler are set by the app, its Logger and
	// MeterProvider default to the app's.
	Consumer inbox.ConsumerConfig
}

// App is the orders service: the command bus with the transactional
// outbox, the forwarder, the consumer that projects the read model, and the
// HTTP API. Create it with New, start it with Run.
type App struct {
	cfg Config
	// Bus dispatches PlaceOrder, PayOrder and CancelOrder.
	Bus *bus.Bus
	// Store is the outbox table.
	Store *gormstore.Store
	// Forwarder relays committed events to the broker.
	Forwarder *outbox.Forwarder
	// Projector is the read-model projection.
	Projector *readmodel.Projector
	// Inbox is the consumer's inbox and failed table.
	Inbox *inbox.Inbox
	// Consumer runs the projection: batched, key-ordered, exactly once.
	Consumer *inbox.Consumer
	// Handler is the HTTP API.
	Handler http.Handler

	publisher *countingPublisher
	cleaner   *retention.Cleaner
}

// New migrates the database and builds the app. It starts nothing.
func New(ctx context.Context, cfg Config) (*App, error) {
	if cfg.DB == nil || cfg.Broker == nil {
		return nil, errors.New("app: Config.DB and Config.Broker are required")
	}
	cfg.Topic = cmp.Or(cfg.Topic, DefaultTopic)
	if err := ValidTopic(cfg.Topic); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Forwarder.Logger == nil {
		cfg.Forwarder.Logger = cfg.Logger
	}
	meters, metricsHandler, err := newMetrics()
	if err != nil {
		return nil, err
	}
	if cfg.Forwarder.MeterProvider == nil {
		cfg.Forwarder.MeterProvider = meters
	}

	store, err := gormstore.New(cfg.DB, gormstore.Config{})
	if err != nil {
		return nil, err
	}
	if err := store.Migrate(ctx); err != nil {
		return nil, err
	}
	if err := orders.Migrate(ctx, cfg.DB); err != nil {
		return nil, fmt.Errorf("migrate orders: %w", err)
	}
	if err := readmodel.Migrate(ctx, cfg.DB); err != nil {
		return nil, err
	}

	a := &App{cfg: cfg, Store: store, publisher: &countingPublisher{Publisher: cfg.Broker.Publisher}}

	// Write side: every order event goes to one topic, keyed by order ID.
	enc := outbox.NewEncoder(outbox.EncoderConfig{
		Topic: func(string, any) string { return cfg.Topic },
	})
	a.Forwarder, err = outbox.NewForwarder(store, a.publisher, cfg.Forwarder)
	if err != nil {
		return nil, err
	}
	tx, err := middleware.NewTransactional(middleware.TransactionalConfig{
		DB: cfg.DB, Store: store, Encoder: enc, AfterCommit: cfg.AfterCommit, Wake: a.Forwarder,
	})
	if err != nil {
		return nil, err
	}
	a.Bus = bus.New(middleware.Recover(), tx.Middleware())
	if err := orders.Register(a.Bus); err != nil {
		return nil, err
	}

	// Read side: the consumer decodes with the producer's marshaler and
	// deduplicates through the inbox.
	in, err := inbox.New(cfg.DB, inbox.Config{})
	if err != nil {
		return nil, err
	}
	reg, err := readmodel.NewRegistry(handlers.RegistryConfig{Marshaler: enc.Marshaler()})
	if err != nil {
		return nil, err
	}
	a.Projector, err = readmodel.NewProjector(reg)
	if err != nil {
		return nil, err
	}
	a.Inbox = in
	ccfg := cfg.Consumer
	if ccfg.Workers == 0 && cfg.DB.Dialector.Name() == "sqlite" {
		// SQLite takes one writer at a time: more workers only queue for
		// its lock, ahead of the commands.
		ccfg.Workers = 1
	}
	if ccfg.Logger == nil {
		ccfg.Logger = cfg.Logger
	}
	if ccfg.MeterProvider == nil {
		ccfg.MeterProvider = meters
	}
	a.Consumer, err = readmodel.NewConsumer(in, a.Projector, cfg.Broker.Subscriber, cfg.Topic, ccfg)
	if err != nil {
		return nil, err
	}
	// Inbox rows are kept for the retention window (7 days), then deleted
	// in small batches, every minute. Delivered outbox rows are deleted at
	// delivery, so there is nothing to purge there.
	a.cleaner, err = retention.New(retention.Config{Inbox: in, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}

	a.Handler, err = httpapi.New(httpapi.Config{
		Bus: a.Bus, DB: cfg.DB, Stats: store.Stats, Broker: cfg.Broker.Health, Metrics: metricsHandler, Logger: cfg.Logger,
		Consumer: a.Consumer.Health, ConsumerFailed: a.consumerFailed,
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// Topic returns the topic of the order events.
func (a *App) Topic() string { return a.cfg.Topic }

// Published returns the number of messages the forwarder has published to
// topic through this app.
func (a *App) Published(topic string) int64 { return a.publisher.count(topic) }

// Run starts the consumer, then the forwarder (a GoChannel drops messages
// published while nobody subscribes) and the inbox cleaner, then the HTTP
// server on ln when ln is not nil, and serves until ctx ends. Then it shuts down in the reverse
// order, each step bounded by ShutdownTimeout: the HTTP server stops taking
// requests and finishes those in flight, the forwarder finishes its batch,
// the consumer finishes the messages in flight. Events committed but not
// yet relayed stay in the outbox for the next start.
func (a *App) Run(ctx context.Context, ln net.Listener) error {
	log := a.cfg.Logger
	consumerCtx, stopConsumer := context.WithCancel(context.WithoutCancel(ctx))
	defer stopConsumer()
	consumerDone := make(chan error, 1)
	go func() { consumerDone <- a.Consumer.Run(consumerCtx) }()
	select {
	case <-a.Consumer.Running():
	case err := <-consumerDone:
		return fmt.Errorf("consumer: %w", err)
	case <-ctx.Done():
		log.Info("shutting down")
		stopConsumer()
		<-consumerDone
		return nil
	}

	fwdCtx, stopFwd := context.WithCancel(context.WithoutCancel(ctx))
	var fwdWG sync.WaitGroup
	fwdWG.Go(func() {
		if err := a.Forwarder.Run(fwdCtx); err != nil {
			log.Error("forwarder stopped", "error", err)
		}
	})
	fwdWG.Go(func() { _ = a.cleaner.Run(fwdCtx) })

	var srv *http.Server
	srvDone := make(chan error, 1)
	if ln != nil {
		srv = &http.Server{Handler: a.Handler, ReadHeaderTimeout: 5 * time.Second}
		go func() { srvDone <- srv.Serve(ln) }()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-srvDone:
		runErr = fmt.Errorf("http server: %w", err)
	case err := <-consumerDone:
		runErr = fmt.Errorf("consumer stopped: %w", err)
		consumerDone <- nil
	}

	log.Info("shutting down")
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("http server shutdown", "error", err)
		}
		cancel()
	}
	stopFwd()
	fwdWG.Wait()
	stopConsumer()
	select {
	case err := <-consumerDone:
		if err != nil {
			log.Warn("consumer shutdown", "error", err)
		}
	case <-time.After(ShutdownTimeout):
		log.Warn("consumer shutdown: batches still running after " + ShutdownTimeout.String())
	}
	return runErr
}

// consumerFailed counts the consumer's messages in the failed table.
func (a *App) consumerFailed(ctx context.Context) (int64, error) {
	counts, err := a.Inbox.FailedCounts(ctx)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, c := range counts[readmodel.Consumer] {
		n += c
	}
	return n, nil
}

// ValidTopic checks a topic name: 1 to 100 letters, digits, '-' or '_'.
func ValidTopic(t string) error {
	if t == "" || len(t) > 100 {
		return fmt.Errorf("topic %q: must be 1 to 100 characters", t)
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("topic %q: only letters, digits, '-' and '_' are allowed (it must be a valid name on every broker)", t)
		}
	}
	return nil
}

// countingPublisher counts the messages published per topic.
type countingPublisher struct {
	message.Publisher
	mu sync.Mutex
	n  map[string]int64
}

// Publish publishes and counts msgs when the publish succeeded.
func (p *countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := p.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	p.mu.Lock()
	if p.n == nil {
		p.n = map[string]int64{}
	}
	p.n[topic] += int64(len(msgs))
	p.mu.Unlock()
	return nil
}

func (p *countingPublisher) count(topic string) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n[topic]
}
