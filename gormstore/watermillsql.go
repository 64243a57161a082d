package gormstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// DefaultForwarderTopic is the default WatermillSQLConfig.ForwarderTopic,
// the default topic of Watermill's components/forwarder. Its
// watermill-sql/v3 table is "watermill_forwarder_topic".
const DefaultForwarderTopic = "forwarder_topic"

// watermillTopicRe is watermill-sql/v3's rule for topic names (they become
// table names).
var watermillTopicRe = regexp.MustCompile(`^[A-Za-z0-9\-$:._]+$`)

// WatermillSQLConfig configures a [WatermillSQLStore]. The zero value is
// valid.
type WatermillSQLConfig struct {
	// ForwarderTopic is the topic the enveloped events are written to and
	// the stock forwarder subscribes to; with the default schema its table
	// is "watermill_<ForwarderTopic>". Letters, digits and - $ : . _ only.
	// Optional; default DefaultForwarderTopic ("forwarder_topic"), the
	// default of components/forwarder.
	ForwarderTopic string
	// Schema is the watermill-sql/v3 PostgreSQL schema: table name and
	// payload column type. Its payload column must be JSON (the default) or
	// JSONB: the rows hold JSON envelopes, and Migrate indexes the message
	// UUID inside them. Optional; default the zero
	// wsql.DefaultPostgreSQLSchema.
	Schema wsql.DefaultPostgreSQLSchema
	// Offsets is the watermill-sql/v3 offsets adapter the stock subscriber
	// uses; Migrate creates its table. Optional; default the zero
	// wsql.DefaultPostgreSQLOffsetsAdapter.
	Offsets wsql.DefaultPostgreSQLOffsetsAdapter
	// Logger receives the logs of the watermill-sql publisher Save creates
	// (trace level only). Optional; default watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

// Validate reports every problem with the config.
func (c WatermillSQLConfig) Validate() error {
	var errs []error
	topic := cmp.Or(c.ForwarderTopic, DefaultForwarderTopic)
	if !watermillTopicRe.MatchString(topic) {
		errs = append(errs, fmt.Errorf("%w: ForwarderTopic %q: use letters, digits and - $ : . _ only (watermill-sql turns it into a table name)", ErrInvalidConfig, topic))
	}
	switch t := strings.ToUpper(strings.TrimSpace(c.Schema.PayloadColumnType(topic))); t {
	case "JSON", "JSONB":
	default:
		errs = append(errs, fmt.Errorf("%w: payload column type %q: the rows hold JSON envelopes; use JSON (the default) or JSONB", ErrInvalidConfig, t))
	}
	return errors.Join(errs...)
}

// WatermillSQLStore is the watermill-sql/v3 backend of outbox.Store: for
// teams that already run Watermill's stock components/forwarder. Save
// writes each event as a watermill-sql/v3 row (DefaultPostgreSQLSchema) in
// the command's transaction, wrapped in a components/forwarder envelope
// that names its destination topic, so an unmodified forwarder.Forwarder
// reading the table with a watermill-sql Subscriber relays it. PostgreSQL
// only.
//
// Compared with the native Store (see docs/watermill.md): it has no
// partition key (the stock forwarder relays the whole table in
// transaction-ID order, one message at a time, which orders every key but
// forbids parallel relays), no attempts, parking or Stats, and it depends
// on PostgreSQL transaction IDs (xid8). A non-empty partition key is kept
// as the outbox.MetadataPartitionKey metadata entry of the message, so it
// reaches the broker. It is safe for concurrent use.
type WatermillSQLStore struct {
	db      *gorm.DB
	topic   string
	schema  wsql.DefaultPostgreSQLSchema
	offsets wsql.DefaultPostgreSQLOffsetsAdapter
	logger  watermill.LoggerAdapter
}

// Retryable reports whether err allows running the transaction again: a
// PostgreSQL serialization failure or deadlock, as Store.Retryable.
func (s *WatermillSQLStore) Retryable(err error) bool { return retryablePostgres(err) }

var _ outbox.Store = (*WatermillSQLStore)(nil)

// NewWatermillSQL returns a watermill-sql/v3 store on db, which must be a
// PostgreSQL database (gorm.io/driver/postgres). db is used by Migrate and
// NewStockForwarder; Save writes through the transaction it is given.
func NewWatermillSQL(db *gorm.DB, cfg WatermillSQLConfig) (*WatermillSQLStore, error) {
	if db == nil || db.Config == nil || db.Dialector == nil {
		return nil, fmt.Errorf("%w: nil or unopened *gorm.DB (open one with gorm.Open)", ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if name := db.Dialector.Name(); name != "postgres" {
		return nil, fmt.Errorf("%w: %q: the watermill-sql/v3 backend runs on PostgreSQL only (use gormstore.New for SQLite)", ErrUnsupportedDialect, name)
	}
	if cfg.Logger == nil {
		cfg.Logger = watermill.NopLogger{}
	}
	return &WatermillSQLStore{
		db:      db,
		topic:   cmp.Or(cfg.ForwarderTopic, DefaultForwarderTopic),
		schema:  cfg.Schema,
		offsets: cfg.Offsets,
		logger:  cfg.Logger,
	}, nil
}

// ForwarderTopic returns the topic the events are written to: the
// ForwarderTopic of the stock forwarder's forwarder.Config.
func (s *WatermillSQLStore) ForwarderTopic() string { return s.topic }

// Table returns the quoted name of the messages table.
func (s *WatermillSQLStore) Table() string { return s.schema.MessagesTable(s.topic) }

// SubscriberConfig returns a watermill-sql/v3 subscriber config that reads
// the store's table: its SchemaAdapter and OffsetsAdapter are the store's,
// InitializeSchema is off (run Migrate). Set ConsumerGroup, PollInterval
// and the other fields as needed.
func (s *WatermillSQLStore) SubscriberConfig() wsql.SubscriberConfig {
	return wsql.SubscriberConfig{SchemaAdapter: s.schema, OffsetsAdapter: s.offsets}
}

// Migrate creates the messages table and the offsets table of the
// forwarder topic as watermill-sql/v3 does (CREATE TABLE IF NOT EXISTS),
// plus a unique index on the message UUID inside the envelopes, so one
// event is never stored twice. It must run before Save: watermill-sql
// refuses to create tables inside a transaction (AutoInitializeSchema),
// since DDL there could commit it implicitly on some databases. It is
// idempotent and safe to run from several processes at once.
func (s *WatermillSQLStore) Migrate(ctx context.Context) error {
	var stmts []string
	for _, q := range s.schema.SchemaInitializingQueries(s.topic) {
		stmts = append(stmts, q.Query)
	}
	for _, q := range s.offsets.SchemaInitializingQueries(s.topic) {
		stmts = append(stmts, q.Query)
	}
	stmts = append(stmts, `CREATE UNIQUE INDEX IF NOT EXISTS `+quoteIdent(s.uuidIndex())+` ON `+s.Table()+` ((payload->>'uuid'))`)
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Exec("SELECT pg_advisory_xact_lock(?)", int64(migrateLockKey)).Error; err != nil {
			return fmt.Errorf("gormstore: migrate %s: lock: %w", s.Table(), err)
		}
		for _, st := range stmts {
			if err := tx.Exec(st).Error; err != nil {
				return fmt.Errorf("gormstore: migrate %s: %w\n%s", s.Table(), err, st)
			}
		}
		return nil
	})
}

// uuidIndex names the unique index of the envelope UUIDs: the unqualified
// table name with a suffix, within PostgreSQL's 63-byte limit.
func (s *WatermillSQLStore) uuidIndex() string {
	name := s.Table()
	if i := strings.LastIndex(name, "."); i >= 0 {
		name = name[i+1:]
	}
	name = strings.ReplaceAll(name, `"`, "")
	const suffix = "_txoutbox_uuid_key"
	if len(name)+len(suffix) > 63 {
		name = name[:63-len(suffix)]
	}
	return name + suffix
}

// Save writes records as enveloped watermill-sql/v3 rows inside tx, which
// must be a transaction (also with PrepareStmt): they are committed or
// rolled back with it. All records go in one INSERT per 1,000, in order.
// It unwraps the *sql.Tx behind tx and writes through a watermill-sql/v3
// Publisher on it, wrapped in components/forwarder's envelope Publisher.
func (s *WatermillSQLStore) Save(ctx context.Context, tx *gorm.DB, records []outbox.Record) error {
	if len(records) == 0 {
		return nil
	}
	sqlTx, err := SQLTx(tx)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Envelope every record, in order: consecutive records of one topic in
	// one call of the envelope publisher, collected in memory.
	var envelopes collectPublisher
	envPub := forwarder.NewPublisher(&envelopes, forwarder.PublisherConfig{ForwarderTopic: s.topic})
	for start := 0; start < len(records); {
		end := start + 1
		for end < len(records) && records[end].Topic == records[start].Topic {
			end++
		}
		msgs := make([]*message.Message, 0, end-start)
		for i, r := range records[start:end] {
			if r.Message == nil {
				return fmt.Errorf("gormstore: record %d has no message", start+i)
			}
			if r.Topic == "" {
				return fmt.Errorf("gormstore: record %d: %w", start+i, outbox.ErrEmptyTopic)
			}
			msgs = append(msgs, withPartitionKey(r))
		}
		if err := envPub.Publish(records[start].Topic, msgs...); err != nil {
			return fmt.Errorf("gormstore: envelope events: %w", err)
		}
		start = end
	}

	pub, err := wsql.NewPublisher(sqlTx, wsql.PublisherConfig{SchemaAdapter: s.schema}, s.logger)
	if err != nil {
		return fmt.Errorf("gormstore: watermill-sql publisher: %w", err)
	}
	defer pub.Close()
	for start := 0; start < len(envelopes.msgs); start += saveChunk {
		end := min(start+saveChunk, len(envelopes.msgs))
		if err := pub.Publish(s.topic, envelopes.msgs[start:end]...); err != nil {
			return fmt.Errorf("gormstore: insert into %s: %w", s.Table(), err)
		}
	}
	return nil
}

// withPartitionKey returns r's message, or a copy of it whose metadata
// carries r's partition key when the metadata lacks it: the watermill-sql
// table has no partition key column.
func withPartitionKey(r outbox.Record) *message.Message {
	if r.PartitionKey == "" || r.Message.Metadata.Get(outbox.MetadataPartitionKey) == r.PartitionKey {
		return r.Message
	}
	m := message.NewMessage(r.Message.UUID, r.Message.Payload)
	for k, v := range r.Message.Metadata {
		m.Metadata[k] = v
	}
	m.Metadata.Set(outbox.MetadataPartitionKey, r.PartitionKey)
	return m
}

// collectPublisher keeps published messages in memory, in order.
type collectPublisher struct {
	msgs []*message.Message
}

func (c *collectPublisher) Publish(_ string, msgs ...*message.Message) error {
	c.msgs = append(c.msgs, msgs...)
	return nil
}

func (c *collectPublisher) Close() error { return nil }

// StockForwarderConfig configures [WatermillSQLStore.NewStockForwarder].
type StockForwarderConfig struct {
	// Logger receives the logs of the forwarder, its router and its
	// subscriber. Required: Watermill's forwarder with a nil logger cannot
	// report an undecodable message and keeps redelivering it.
	Logger watermill.LoggerAdapter
	// Subscriber configures the watermill-sql/v3 subscriber that reads the
	// table. Its SchemaAdapter and OffsetsAdapter are replaced by the
	// store's. Optional; the watermill-sql defaults (poll every second,
	// 30s ack deadline, consumer group "").
	Subscriber wsql.SubscriberConfig
	// Forwarder configures components/forwarder. Its ForwarderTopic is
	// replaced by the store's. Optional.
	Forwarder forwarder.Config
}

// NewStockForwarder returns Watermill's stock forwarder.Forwarder reading
// the store's table through a watermill-sql/v3 Subscriber on the store's
// database and publishing every event to publisher, unchanged: the same
// forwarder a team would build by hand, with the store's schema and topic
// filled in. Run it with Run(ctx) and stop it with Close.
func (s *WatermillSQLStore) NewStockForwarder(publisher message.Publisher, cfg StockForwarderConfig) (*forwarder.Forwarder, error) {
	var errs []error
	if publisher == nil {
		errs = append(errs, fmt.Errorf("%w: missing publisher (any Watermill message.Publisher)", ErrInvalidConfig))
	}
	if cfg.Logger == nil {
		errs = append(errs, fmt.Errorf("%w: missing Logger (the stock forwarder needs one, for example watermill.NewSlogLogger(nil))", ErrInvalidConfig))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sqlDB, err := s.db.DB()
	if err != nil {
		return nil, fmt.Errorf("gormstore: %w", err)
	}
	subCfg := cfg.Subscriber
	subCfg.SchemaAdapter, subCfg.OffsetsAdapter = s.schema, s.offsets
	sub, err := wsql.NewSubscriber(sqlDB, subCfg, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("gormstore: watermill-sql subscriber: %w", err)
	}
	fwdCfg := cfg.Forwarder
	fwdCfg.ForwarderTopic = s.topic
	f, err := forwarder.NewForwarder(sub, publisher, cfg.Logger, fwdCfg)
	if err != nil {
		_ = sub.Close()
		return nil, fmt.Errorf("gormstore: stock forwarder: %w", err)
	}
	return f, nil
}
