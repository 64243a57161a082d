package gormstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/txoutbox/txoutbox/outbox"
)

// relayRowsError is returned by the methods a relay of another source
// uses on a store of another database than PostgreSQL. It matches
// ErrUnsupportedDialect.
type relayRowsError struct{ dialect string }

func (e relayRowsError) Error() string {
	return "gormstore: handing rows over from another relay (the WAL relay) needs PostgreSQL; this store is on " + e.dialect
}

func (e relayRowsError) Is(target error) bool { return target == ErrUnsupportedDialect }

// relayRowsPostgres fails unless the store is on PostgreSQL.
func (s *Store) relayRowsPostgres() error {
	if _, ok := s.drv.(*postgresDriver); !ok {
		return relayRowsError{dialect: s.drv.dialect().String()}
	}
	return nil
}

// InsertRelayRows writes rows that a relay reading another source (the
// WAL relay of package walrelay) hands over to the table, with one
// statement, in the order given: the table's forwarder relays them from
// then on. A row whose ID has a Park entry in failures is written parked,
// with that failure's Error as its last error and its Attempts; the others
// are written pending. A key's rows written behind a parked row wait for
// it, as rows saved by commands do, until it is requeued or discarded.
// Row IDs only match failures to rows: the table numbers the rows anew,
// in the order given. A row whose message UUID an undelivered row of the
// table already has is skipped, so handing the same rows over twice (a
// relay restarted before it confirmed them to its source) writes them
// once. It returns how many rows it wrote. PostgreSQL only.
func (s *Store) InsertRelayRows(ctx context.Context, rows []outbox.Row, failures []outbox.Failure) (int64, error) {
	if err := s.relayRowsPostgres(); err != nil {
		return 0, err
	}
	if len(rows) == 0 {
		return 0, nil
	}
	parked := make(map[int64]string, len(failures))
	for _, f := range failures {
		if f.Park {
			parked[f.ID] = cleanError(f.Error)
		}
	}
	n := len(rows)
	var (
		uuids, topics, keys = make([]string, n), make([]string, n), make([]string, n)
		payloads            = make([][]byte, n)
		mds, errs           = make([]string, n), make([]string, n)
		attempts            = make([]int32, n)
		park                = make([]bool, n)
		pending             bool
	)
	for i, r := range rows {
		uuids[i], topics[i], keys[i] = r.UUID, r.Topic, r.PartitionKey
		payloads[i] = r.Payload
		if payloads[i] == nil {
			payloads[i] = []byte{}
		}
		mds[i] = string(r.Metadata)
		if mds[i] == "" {
			mds[i] = "{}"
		}
		attempts[i] = int32(min(r.Attempts, 1<<31-1))
		errs[i], park[i] = parked[r.ID]
		if park[i] && errs[i] == "" {
			errs[i] = "parked"
		}
		pending = pending || !park[i]
	}
	sqlDB, err := s.db.DB()
	if err != nil {
		return 0, fmt.Errorf("gormstore: insert relayed rows into %s: %w", s.table, err)
	}
	res, err := sqlDB.ExecContext(ctx, s.sql["insert_relayed"], uuids, topics, keys, payloads, mds, attempts, errs, park)
	if err != nil {
		return 0, fmt.Errorf("gormstore: insert relayed rows into %s: %w", s.table, err)
	}
	wrote, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("gormstore: insert relayed rows into %s: %w", s.table, err)
	}
	if pending && wrote > 0 {
		s.drv.notifyCommitted()
	}
	return wrote, nil
}

// UndeliveredKeys returns those of keys that have an undelivered row in
// the table, pending or parked, in no particular order; with keys nil it
// returns every partition key that has one. A relay that hands a key's
// rows over to the table (InsertRelayRows) asks it whether the key's
// rows still wait there: while they do, the key's later rows must be
// handed over too, behind them. PostgreSQL only.
func (s *Store) UndeliveredKeys(ctx context.Context, keys []string) ([]string, error) {
	if err := s.relayRowsPostgres(); err != nil {
		return nil, err
	}
	if keys != nil && len(keys) == 0 {
		return []string{}, nil
	}
	sqlDB, err := s.db.DB()
	if err != nil {
		return nil, fmt.Errorf("gormstore: undelivered keys of %s: %w", s.table, err)
	}
	q, args := s.sql["undelivered_keys"], []any{keys}
	if keys == nil {
		q, args = s.sql["undelivered_keys_all"], nil
	}
	rs, err := sqlDB.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("gormstore: undelivered keys of %s: %w", s.table, err)
	}
	defer rs.Close()
	out := []string{}
	for rs.Next() {
		var k string
		if err := rs.Scan(&k); err != nil {
			return nil, fmt.Errorf("gormstore: undelivered keys of %s: %w", s.table, err)
		}
		out = append(out, k)
	}
	if err := errors.Join(rs.Err(), rs.Close()); err != nil {
		return nil, fmt.Errorf("gormstore: undelivered keys of %s: %w", s.table, err)
	}
	return out, nil
}
