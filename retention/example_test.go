package retention_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/glebarez/sqlite"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/outbox"
	"github.com/txoutbox/txoutbox/retention"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// A cleaner deletes a delivered outbox row and an inbox row once they are
// older than their retention windows. Production code starts it with
// go cleaner.Run(ctx); RunOnce is one pass.
func ExampleCleaner_RunOnce() {
	dir, _ := os.MkdirTemp("", "retention")
	defer os.RemoveAll(dir)
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "app.db")), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		panic(err)
	}
	if sqlDB, err := db.DB(); err == nil {
		defer sqlDB.Close()
	}
	ctx := context.Background()
	store, err := gormstore.New(db, gormstore.Config{KeepDelivered: true})
	if err != nil {
		panic(err)
	}
	if err := store.Migrate(ctx); err != nil {
		panic(err)
	}
	in, err := inbox.New(db, inbox.Config{})
	if err != nil {
		panic(err)
	}
	if err := in.Migrate(ctx); err != nil {
		panic(err)
	}

	// An event delivered two days ago, kept for audit.
	if err := db.Transaction(func(tx *gorm.DB) error {
		return store.Save(ctx, tx, []outbox.Record{{Topic: "orders", Message: message.NewMessage(outbox.NewUUID(), []byte(`{}`))}})
	}); err != nil {
		panic(err)
	}
	claim, err := store.Claim(ctx, outbox.ClaimParams{Limit: 10})
	if err != nil {
		panic(err)
	}
	if err := claim.Finish(ctx, []int64{claim.Rows()[0].ID}, nil); err != nil {
		panic(err)
	}
	db.Exec("UPDATE txoutbox_outbox SET delivered_at = ?", time.Now().UTC().Add(-48*time.Hour))
	// A message a consumer processed 30 days ago.
	past, err := inbox.New(db, inbox.Config{Now: func() time.Time { return time.Now().Add(-30 * 24 * time.Hour) }})
	if err != nil {
		panic(err)
	}
	if _, err := past.Process(ctx, "billing", outbox.NewUUID(), func(context.Context) error { return nil }); err != nil {
		panic(err)
	}

	cleaner, err := retention.New(retention.Config{
		Outbox:          store,
		Inbox:           in,
		OutboxRetention: 24 * time.Hour,
		InboxRetention:  14 * 24 * time.Hour,
	})
	if err != nil {
		panic(err)
	}
	res, err := cleaner.RunOnce(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Printf("deleted %d outbox rows and %d inbox rows\n", res.OutboxDeleted, res.InboxDeleted)
	// Output:
	// deleted 1 outbox rows and 1 inbox rows
}
