package inbox_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/glebarez/sqlite"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// The same message delivered three times changes the consumer's data once.
func ExampleInbox_Middleware() {
	dir, _ := os.MkdirTemp("", "inbox")
	defer os.RemoveAll(dir)
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "consumer.db")), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		panic(err)
	}
	if sqlDB, err := db.DB(); err == nil {
		defer sqlDB.Close()
	}
	ctx := context.Background()
	if err := inbox.Migrate(ctx, db); err != nil {
		panic(err)
	}
	db.Exec("CREATE TABLE charges (message_uuid TEXT NOT NULL)")

	in, err := inbox.New(db, inbox.Config{})
	if err != nil {
		panic(err)
	}
	charge := func(msg *message.Message) ([]*message.Message, error) {
		tx, err := gormstore.Tx(msg.Context()) // the inbox's transaction
		if err != nil {
			return nil, err
		}
		fmt.Println("charging for", msg.UUID)
		return nil, tx.Exec("INSERT INTO charges (message_uuid) VALUES (?)", msg.UUID).Error
	}
	// With a router: handler.AddMiddleware(in.Middleware("billing.charge")).
	h := in.Middleware("billing.charge")(charge)

	for range 3 {
		if _, err := h(message.NewMessage("0190f5b2-7c1e-7000-8000-000000000001", []byte(`{}`))); err != nil {
			panic(err)
		}
	}
	var charges int
	db.Raw("SELECT count(*) FROM charges").Scan(&charges)
	fmt.Println("charges:", charges)
	// Output:
	// charging for 0190f5b2-7c1e-7000-8000-000000000001
	// charges: 1
}
