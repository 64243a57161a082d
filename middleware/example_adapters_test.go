package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"

	"github.com/glebarez/sqlite"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// TicketBooked is the event of the adapter examples.
type TicketBooked struct {
	Seat string `json:"seat"`
}

// BookTicket is the command of the adapter examples.
type BookTicket struct {
	Seat string
}

// exampleDB opens a SQLite database with the outbox and a tickets table,
// and returns a Transactional on it.
func exampleDB() (*gorm.DB, *middleware.Transactional, func()) {
	dir, err := os.MkdirTemp("", "txoutbox-example")
	if err != nil {
		panic(err)
	}
	db, err := gorm.Open(sqlite.Open(testdb.SQLiteDSN(filepath.Join(dir, "app.db"))), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		panic(err)
	}
	if err := gormstore.Migrate(context.Background(), db); err != nil {
		panic(err)
	}
	if err := db.Exec(`CREATE TABLE tickets (seat TEXT PRIMARY KEY)`).Error; err != nil {
		panic(err)
	}
	store, err := gormstore.New(db, gormstore.Config{})
	if err != nil {
		panic(err)
	}
	tm, err := middleware.NewTransactional(middleware.TransactionalConfig{DB: db, Store: store})
	if err != nil {
		panic(err)
	}
	return db, tm, func() {
		if sqlDB, err := db.DB(); err == nil {
			_ = sqlDB.Close()
		}
		_ = os.RemoveAll(dir)
	}
}

func bookTicket(ctx context.Context, cmd BookTicket) error {
	tx, err := outbox.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Exec(`INSERT INTO tickets (seat) VALUES (?)`, cmd.Seat).Error; err != nil {
		return err
	}
	if cmd.Seat == "13" {
		return errors.New("no seat 13")
	}
	return outbox.Emit(ctx, TicketBooked{Seat: cmd.Seat})
}

// A plain function, as another mediator would hold it, becomes
// transactional: the ticket and its event commit together, or neither.
func ExampleWrap() {
	db, tm, done := exampleDB()
	defer done()

	book := middleware.Wrap(tm, bookTicket)
	fmt.Println(book(context.Background(), BookTicket{Seat: "12A"}))
	fmt.Println(book(context.Background(), BookTicket{Seat: "13"}))

	var tickets, events int64
	db.Raw(`SELECT count(*) FROM tickets`).Scan(&tickets)
	db.Raw(`SELECT count(*) FROM txoutbox_outbox WHERE topic = 'TicketBooked'`).Scan(&events)
	fmt.Println("tickets:", tickets, "events:", events)
	// Output:
	// <nil>
	// no seat 13
	// tickets: 1 events: 1
}

// One transaction per request: a 2xx commits the request's writes and
// events; any other status rolls them back and is sent as the handler
// wrote it.
func ExampleTransactional_HTTP() {
	db, tm, done := exampleDB()
	defer done()

	mux := http.NewServeMux()
	mux.Handle("POST /tickets/{seat}", tm.HTTP(middleware.HTTPConfig{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := bookTicket(r.Context(), BookTicket{Seat: r.PathValue("seat")}); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})))

	for _, seat := range []string{"12A", "13"} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/tickets/"+seat, nil))
		body, _ := io.ReadAll(rec.Body)
		fmt.Println(strings.TrimSpace(fmt.Sprintf("%s %d %s", seat, rec.Code, body)))
	}
	var command string
	db.Raw(`SELECT json_extract(metadata, '$.command') FROM txoutbox_outbox`).Scan(&command)
	fmt.Println("event of command:", command)
	// Output:
	// 12A 201
	// 13 409 no seat 13
	// event of command: POST /tickets/{seat}
}
