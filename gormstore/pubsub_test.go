package gormstore_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"gorm.io/gorm"
)

// fullTestsEnv enables TestPubSubStress; `make test-full` sets it.
const fullTestsEnv = "TXOUTBOX_TEST_FULL"

// pubSubFeatures are the Features the native outbox table declares to
// Watermill's universal test suite. docs/watermill.md explains each one.
func pubSubFeatures() tests.Features {
	return tests.Features{
		// A row is deleted (or marked delivered) by its first Ack: every
		// subscriber of a topic competes for the same rows.
		ConsumerGroups: false,
		// At least once: an Ack is written when its batch ends, so a crash
		// or a failed write in between delivers the message again.
		ExactlyOnceDelivery: false,
		// One message at a time, the next only after the Ack (TestNoAck),
		// in publish order per partition key across any number of
		// subscribers, and for messages without a key (as the suite's are)
		// with a single subscriber of the topic.
		GuaranteedOrder:                     true,
		GuaranteedOrderWithSingleSubscriber: true,
		// Rows live in PostgreSQL: a new Pub/Sub on the same table gets
		// every message not yet acked.
		Persistent: true,
		// Restarting PostgreSQL would cut every other test running on it;
		// the chaos tests (internal/chaos) restart it alone.
		RestartServiceCommand: nil,
		// Several subscribers, in one process or many, share a table safely.
		RequireSingleInstance: false,
		// Acked messages are gone: a new subscriber does not get them.
		NewSubscriberReceivesOldMessages: false,
		// Message contexts are not stored.
		ContextPreserved: false,
		// Topics are a column value: the suite's generated names work as is.
		GenerateTopicFunc: nil,
		// The full suite takes about 15s here; -short runs the short one.
		ForceShort: false,
	}
}

// TestPubSub runs Watermill's universal Pub/Sub suite on the native outbox
// table on PostgreSQL: gormstore.Publisher and gormstore.Subscriber.
//
// Every Pub/Sub the suite builds reads and writes the same tables, in a
// schema of this test (a suite test that reopens a Pub/Sub expects the
// messages of the earlier one), with one table per topic (topicTables):
// the suite publishes copies of one message, with one UUID, to 20 topics,
// and a table stores a message UUID once (the outbox's dedupe guarantee,
// checked by outboxtest). A table per topic is also how an application
// fans one message out to several topics with the native table.
//
// The subscribers poll every 50ms instead of holding a LISTEN connection
// each: the suite builds up to 50 subscribers at once, and a connection
// each would exhaust PostgreSQL. TestSubscriberWakesOnNotify covers LISTEN.
func TestPubSub(t *testing.T) {
	t.Parallel()
	newPubSub := newTopicPubSubs(t, testdb.Postgres)
	tests.TestPubSub(t, pubSubFeatures(), newPubSub, noConsumerGroups)
}

// TestPubSubMySQL runs the same suite on MySQL/MariaDB, whose subscribers
// always poll (MySQL has no LISTEN).
func TestPubSubMySQL(t *testing.T) {
	t.Parallel()
	tests.TestPubSub(t, pubSubFeatures(), newTopicPubSubs(t, testdb.MySQL), noConsumerGroups)
}

// TestPubSubStress runs Watermill's stress variant of the universal suite:
// the whole suite STRESS_TEST_COUNT times (default 10) at once, on one
// database. It runs only with TXOUTBOX_TEST_FULL=1 (`make test-full`).
func TestPubSubStress(t *testing.T) {
	if os.Getenv(fullTestsEnv) == "" {
		t.Skipf("set %s=1 (make test-full) to run the stress suite", fullTestsEnv)
	}
	t.Parallel()
	tests.TestPubSubStressTest(t, pubSubFeatures(), newTopicPubSubs(t, testdb.Postgres), noConsumerGroups)
}

// newTopicPubSubs returns the suite's Pub/Sub constructor: Pub/Subs on
// tables of one new database of d, a table per topic.
func newTopicPubSubs(t *testing.T, d testdb.Dialect) tests.PubSubConstructor {
	db := testdb.Open(t, d)
	sqlDB, err := db.DB()
	require.NoError(t, err)
	sqlDB.SetMaxOpenConns(32)
	sqlDB.SetMaxIdleConns(32)
	tables := &topicTables{db: db, stores: map[string]*gormstore.Store{}}
	return func(t *testing.T) (message.Publisher, message.Subscriber) {
		pub := &topicPublisher{tables: tables, pubs: map[string]*gormstore.Publisher{}}
		sub := &topicSubscriber{tables: tables, subs: map[string]*gormstore.Subscriber{}, cfg: gormstore.SubscriberConfig{
			NoListen:     true,
			PollInterval: 50 * time.Millisecond,
		}}
		t.Cleanup(func() { _ = sub.Close() })
		return pub, sub
	}
}

func noConsumerGroups(t *testing.T, _ string) (message.Publisher, message.Subscriber) {
	t.Fatal("consumer groups are not supported (Features.ConsumerGroups is false)")
	return nil, nil
}

// topicTables gives every topic an outbox table of its own, created on
// first use, all in one database.
type topicTables struct {
	db     *gorm.DB
	mu     sync.Mutex
	stores map[string]*gormstore.Store
}

func (tt *topicTables) store(topic string) (*gormstore.Store, error) {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if s, ok := tt.stores[topic]; ok {
		return s, nil
	}
	sum := sha256.Sum256([]byte(topic))
	s, err := gormstore.New(tt.db, gormstore.Config{Table: "ps_" + hex.EncodeToString(sum[:8])})
	if err != nil {
		return nil, err
	}
	if err := s.Migrate(context.Background()); err != nil {
		return nil, err
	}
	tt.stores[topic] = s
	return s, nil
}

// topicPublisher publishes each topic with the gormstore.Publisher of the
// topic's table.
type topicPublisher struct {
	tables *topicTables
	mu     sync.Mutex
	closed bool
	pubs   map[string]*gormstore.Publisher
}

func (p *topicPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	pub, ok := p.pubs[topic]
	if !ok && !p.closed {
		s, err := p.tables.store(topic)
		if err != nil {
			p.mu.Unlock()
			return err
		}
		if pub, err = gormstore.NewPublisher(s); err != nil {
			p.mu.Unlock()
			return err
		}
		p.pubs[topic] = pub
	}
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return gormstore.ErrPublisherClosed
	}
	return pub.Publish(topic, msgs...)
}

func (p *topicPublisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var errs []error
	for _, pub := range p.pubs {
		errs = append(errs, pub.Close())
	}
	return errors.Join(errs...)
}

// topicSubscriber subscribes to each topic with a gormstore.Subscriber on
// the topic's table.
type topicSubscriber struct {
	tables *topicTables
	cfg    gormstore.SubscriberConfig
	mu     sync.Mutex
	closed bool
	subs   map[string]*gormstore.Subscriber
}

func (s *topicSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, gormstore.ErrSubscriberClosed
	}
	sub, ok := s.subs[topic]
	if !ok {
		st, err := s.tables.store(topic)
		if err != nil {
			return nil, err
		}
		if sub, err = gormstore.NewSubscriber(st, s.cfg); err != nil {
			return nil, err
		}
		s.subs[topic] = sub
	}
	return sub.Subscribe(ctx, topic)
}

func (s *topicSubscriber) Close() error {
	s.mu.Lock()
	s.closed = true
	subs := make([]*gormstore.Subscriber, 0, len(s.subs))
	for _, sub := range s.subs {
		subs = append(subs, sub)
	}
	s.mu.Unlock()
	var errs []error
	for _, sub := range subs {
		errs = append(errs, sub.Close())
	}
	return errors.Join(errs...)
}
