package gormstore

import (
	"cmp"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/txoutbox/txoutbox/outbox"
)

// errBadConn makes database/sql discard a connection.
var errBadConn = driver.ErrBadConn

// errNotPgx is returned when the *gorm.DB does not run on pgx.
var errNotPgx = errors.New("gormstore: the PostgreSQL relay needs the pgx driver (gorm.io/driver/postgres with its default pgx/v5 stdlib connection)")

// pgClaim is a claim held in an open PostgreSQL transaction on a dedicated
// connection. The transaction holds the row locks and key advisory locks
// until Finish or Release.
type pgClaim struct {
	s    *Store
	conn *sql.Conn
	rows []outbox.Row
	mu   sync.Mutex
	done bool
}

// withPgx runs f on conn's pgx connection. An error that may have left the
// connection in an unknown state discards the connection.
func withPgx(conn *sql.Conn, f func(c *pgx.Conn) error) error {
	return conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return errNotPgx
		}
		return f(sc.Conn())
	})
}

func (s *Store) claimPostgres(ctx context.Context, p outbox.ClaimParams) (outbox.Claim, error) {
	sqlDB, err := s.db.DB()
	if err != nil {
		return nil, err
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("gormstore: connect: %w", err)
	}
	c := &pgClaim{s: s, conn: conn}
	lockspace, err := s.lockspace(ctx)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("gormstore: claim from %s: %w", s.table, err)
	}
	err = withPgx(conn, func(px *pgx.Conn) error {
		r := &s.relay
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		window := p.Limit * 2
		exclude := p.ExcludeKeys
		if exclude == nil {
			exclude = []string{}
		}
		if len(p.Topics) > 0 {
			b.Queue(r.keyedTopics, window, lockspace, p.Limit, exclude, p.Topics)
			b.Queue(r.unkeyedTopics, p.Limit, p.Topics)
		} else {
			b.Queue(r.keyed, window, lockspace, p.Limit, exclude)
			b.Queue(r.unkeyed, p.Limit)
		}
		br := px.SendBatch(ctx, b)
		err := c.readBatch(br, p.Limit)
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		return err
	})
	if err != nil {
		c.abort()
		return nil, fmt.Errorf("gormstore: claim from %s: %w", s.table, err)
	}
	return c, nil
}

// readBatch reads the claim's rows: the keyed and the unordered ones, in ID
// order, at most limit (rows past it stay untouched and are released at
// the end of the claim's transaction).
func (c *pgClaim) readBatch(br pgx.BatchResults, limit int) error {
	if _, err := br.Exec(); err != nil { // BEGIN
		return err
	}
	for range 2 { // keyed, unordered
		rows, err := br.Query()
		if err != nil {
			return err
		}
		got, err := scanRows(rows)
		if err != nil {
			return err
		}
		c.rows = append(c.rows, got...)
	}
	slices.SortFunc(c.rows, func(a, b outbox.Row) int { return cmp.Compare(a.ID, b.ID) })
	// Dropping the tail keeps each key's rows a prefix in ID order.
	c.rows = c.rows[:min(len(c.rows), limit)]
	return nil
}

func scanRows(rows pgx.Rows) ([]outbox.Row, error) {
	defer rows.Close()
	var out []outbox.Row
	for rows.Next() {
		var r outbox.Row
		var attempts int32
		if err := rows.Scan(&r.ID, &r.UUID, &r.Topic, &r.PartitionKey, &r.Payload, &r.Metadata, &attempts, &r.Blocked); err != nil {
			return nil, err
		}
		r.Attempts = int(attempts)
		out = append(out, r)
	}
	return out, rows.Err()
}

func (c *pgClaim) Rows() []outbox.Row { return c.rows }

// Finish marks delivered rows, records failures and commits, in one round
// trip.
func (c *pgClaim) Finish(ctx context.Context, delivered []int64, failures []outbox.Failure) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return errors.New("gormstore: claim already finished or released")
	}
	c.done = true
	r := &c.s.relay
	err := withPgx(c.conn, func(px *pgx.Conn) error {
		b := &pgx.Batch{}
		if len(delivered) > 0 {
			b.Queue(r.delivered, delivered)
		}
		if len(failures) > 0 {
			ids := make([]int64, len(failures))
			errs := make([]string, len(failures))
			delays := make([]int64, len(failures))
			park := make([]bool, len(failures))
			for i, f := range failures {
				ids[i], errs[i], delays[i], park[i] = f.ID, cleanError(f.Error), f.RetryAfter.Microseconds(), f.Park
			}
			b.Queue(r.fail, ids, errs, delays, park)
		}
		// A lost delivery mark after a crash means a redelivery, never a
		// loss, so the relay's commits need not wait for the WAL flush.
		b.Queue("SET LOCAL synchronous_commit = off")
		b.Queue("COMMIT")
		return px.SendBatch(ctx, b).Close()
	})
	if err != nil {
		c.abort()
		return fmt.Errorf("gormstore: finish claim on %s: %w", c.s.table, err)
	}
	return c.conn.Close()
}

// Release rolls the claim's transaction back: every row stays as it was.
func (c *pgClaim) Release(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return nil
	}
	c.done = true
	err := withPgx(c.conn, func(px *pgx.Conn) error {
		_, err := px.Exec(ctx, "ROLLBACK")
		return err
	})
	if err != nil {
		c.abort()
		return fmt.Errorf("gormstore: release claim on %s: %w", c.s.table, err)
	}
	return c.conn.Close()
}

// abort discards the claim's connection: closing it ends the transaction on
// the server, which releases every lock.
func (c *pgClaim) abort() {
	c.done = true
	_ = withPgx(c.conn, func(px *pgx.Conn) error {
		return driver.ErrBadConn
	})
	_ = c.conn.Close()
}

// Listen calls wake whenever a transaction that saved outbox rows commits
// (PostgreSQL NOTIFY, see NotifyCommitted), until ctx ends or the
// connection fails. It holds one connection of the pool while it runs. On
// SQLite it returns outbox.ErrListenUnsupported at once: forwarders there
// rely on in-process wake-ups and polling.
func (s *Store) Listen(ctx context.Context, wake func()) error {
	if s.dialect != postgres {
		return outbox.ErrListenUnsupported
	}
	sqlDB, err := s.db.DB()
	if err != nil {
		return err
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := s.channelName(ctx)
	if err != nil {
		return err
	}
	var listenErr error
	_ = withPgx(conn, func(px *pgx.Conn) error {
		if _, err := px.Exec(ctx, "LISTEN "+quoteIdent(ch)); err != nil {
			listenErr = err
			return driver.ErrBadConn
		}
		wake() // rows committed before LISTEN took effect
		for {
			if _, err := px.WaitForNotification(ctx); err != nil {
				listenErr = err
				// Never hand a listening connection back to the pool.
				return driver.ErrBadConn
			}
			wake()
		}
	})
	if listenErr == nil {
		listenErr = err
	}
	return listenErr
}
