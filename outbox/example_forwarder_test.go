package outbox_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/glebarez/sqlite"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// The forwarder relays committed outbox rows to a Watermill publisher, in
// commit order per partition key, and deletes them. Wake makes it look at
// once instead of at its next poll; the transactional middleware calls it
// after each commit (TransactionalConfig.Wake).
func ExampleNewForwarder() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dir, _ := os.MkdirTemp("", "forwarder-example")
	defer os.RemoveAll(dir)
	db, err := gorm.Open(sqlite.Open(testdb.SQLiteDSN(filepath.Join(dir, "app.db"))), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		fmt.Println(err)
		return
	}
	if sqlDB, err := db.DB(); err == nil {
		defer sqlDB.Close()
	}
	store, err := gormstore.New(db, gormstore.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := store.Migrate(ctx); err != nil {
		fmt.Println(err)
		return
	}
	recs, _ := outbox.NewEncoder(outbox.EncoderConfig{}).EncodeAll([]outbox.Entry{
		{Event: CartCheckedOut{CartID: "c-1", Total: 30}}, {Event: CartCheckedOut{CartID: "c-1", Total: 45}},
	})
	_ = db.Transaction(func(tx *gorm.DB) error { return store.Save(ctx, tx, recs) })

	pubsub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	defer pubsub.Close()
	messages, _ := pubsub.Subscribe(ctx, "CartCheckedOut")

	fwd, err := outbox.NewForwarder(store, pubsub, outbox.ForwarderConfig{
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	done := make(chan error, 1)
	go func() { done <- fwd.Run(ctx) }()
	fwd.Wake()
	for range 2 {
		msg := <-messages
		fmt.Println(msg.Metadata.Get(outbox.MetadataPartitionKey), string(msg.Payload))
		msg.Ack()
	}
	cancel()
	fmt.Println("Run:", <-done)
	// Output:
	// cart-c-1 {"cart_id":"c-1","total":30}
	// cart-c-1 {"cart_id":"c-1","total":45}
	// Run: <nil>
}
