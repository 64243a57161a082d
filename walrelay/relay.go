package walrelay

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/txoutbox/txoutbox/internal/ctxtime"
	"github.com/txoutbox/txoutbox/internal/walmsg"
	"github.com/txoutbox/txoutbox/outbox"
)

// ErrUndecodable stops a relay at a logical decoding message with the
// relay's prefix whose content is not a frame it can read: its events
// cannot be published, and skipping it would lose them.
var ErrUndecodable = errors.New("walrelay: undecodable event message")

// errStandby ends a session that could not become the slot's reader.
var errStandby = errors.New("walrelay: another relay reads the slot")

// Relay publishes the events that commands wrote as logical decoding
// messages, read from a replication slot, to a Watermill publisher: in
// commit order, in batches, through an [outbox.Engine]. It confirms to
// the server the end of each transaction whose events were all
// published, so that after a restart the slot streams again exactly the
// transactions not yet confirmed.
//
// Only one relay reads a slot. Every relay started on it tries to become
// its reader; the others stand by and try again every PollInterval, so
// one takes over within about that time after the reader stops or its
// connection ends. A reader that vanishes without closing its connection
// (a network partition, a frozen host) holds the slot until the server
// drops the connection: after wal_sender_timeout (60s by default)
// without a reply.
type Relay struct {
	connCfg *pgconn.Config
	cfg     Config
	eng     *outbox.Engine
	log     *slog.Logger
	lockKey int64
	running atomic.Bool
	// heldRows, divertedKeys and parked are the publisher's state, for
	// Stats: rows waiting in memory for a retry, keys whose events go to
	// the table, and rows parked in the table since the relay started.
	heldRows     atomic.Int64
	divertedKeys atomic.Int64
	parked       atomic.Int64
	// warnedAt is when the last warning about retained WAL was logged
	// (unix nanoseconds).
	warnedAt atomic.Int64
	// nextID numbers the events read, the IDs of their rows: increasing
	// in stream order, so in commit order. Used by Run's reader only.
	nextID int64
}

// NewRelay returns a relay that reads cfg.Slot on the database at
// connString (a PostgreSQL URL or key=value string; the relay adds
// replication=database itself) and publishes to pub.
func NewRelay(connString string, pub message.Publisher, cfg Config) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	connCfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("walrelay: %w", err)
	}
	connCfg.RuntimeParams["replication"] = "database"
	if connCfg.RuntimeParams["application_name"] == "" {
		connCfg.RuntimeParams["application_name"] = "txoutbox-walrelay"
	}
	eng, err := outbox.NewEngine(pub, cfg.Forwarder)
	if err != nil {
		return nil, err
	}
	h := fnv.New64a()
	h.Write([]byte("txoutbox.walrelay." + cfg.Slot))
	return &Relay{
		connCfg: connCfg,
		cfg:     cfg,
		eng:     eng,
		log:     cfg.Forwarder.Logger,
		lockKey: int64(h.Sum64()),
	}, nil
}

// Run relays until ctx ends, then waits up to ShutdownTimeout for the
// batch being published, confirms what was published, and returns nil.
// Lost connections and publish failures do not stop it: it logs them,
// backs off and goes on. It returns an error, at once, for what waiting
// will not mend: a server without wal_level=logical ([ErrWALLevel]) or
// older than PostgreSQL 14 ([ErrServerVersion]), a missing slot
// ([ErrNoSlot]) or publication ([ErrNoPublication]), a slot it cannot
// read ([ErrBadSlot]; [ErrSlotInvalidated] for one that lost WAL it
// needed), and a message it cannot decode ([ErrUndecodable];
// what came before it is published and confirmed first, so the slot
// stops right at it).
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return outbox.ErrAlreadyRunning
	}
	defer r.running.Store(false)
	unobserve, err := r.observeSlot()
	if err != nil {
		return fmt.Errorf("walrelay: slot metrics: %w", err)
	}
	defer unobserve()
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		r.watchSlot(watchCtx)
	}()
	defer func() {
		stopWatch()
		<-watched
	}()
	failures := 0
	standing := false
	for ctx.Err() == nil {
		streamed, err := r.session(ctx)
		if streamed {
			failures = 0 // a failure after streaming is a first failure
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, errStandby):
			if !standing {
				r.log.Info("walrelay: another relay reads the slot; standing by", "slot", r.cfg.Slot, "retry_every", r.cfg.Forwarder.PollInterval)
				standing = true
			}
			failures = 0
			ctxtime.Sleep(ctx, r.cfg.Forwarder.PollInterval)
			continue
		case errors.Is(err, ErrWALLevel), errors.Is(err, ErrServerVersion), errors.Is(err, ErrNoSlot), errors.Is(err, ErrNoPublication), errors.Is(err, ErrBadSlot), errors.Is(err, ErrUndecodable):
			return err
		}
		standing = false
		failures++
		wait := min(backoffFor(r.cfg.Forwarder.MinBackoff, r.cfg.Forwarder.MaxBackoff, failures), maxOutageBackoff)
		if failures == 1 || failures%10 == 0 {
			r.log.Warn("walrelay: replication session failed; reconnecting", "slot", r.cfg.Slot, "error", err, "consecutive", failures, "next_try_in", wait)
		}
		ctxtime.Sleep(ctx, wait)
	}
	return nil
}

// backoffFor returns minB doubled n-1 times, capped at maxB.
func backoffFor(minB, maxB time.Duration, n int) time.Duration {
	d := minB
	for i := 1; i < n && d < maxB; i++ {
		d *= 2
	}
	return min(d, maxB)
}

// session connects, becomes the slot's reader and streams until ctx ends
// or the connection fails, and reports whether it streamed. It returns
// errStandby when another relay reads the slot.
func (r *Relay) session(ctx context.Context) (streamed bool, err error) {
	conn, err := pgconn.ConnectConfig(ctx, r.connCfg)
	if err != nil {
		return false, fmt.Errorf("connect: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()

	if err := checkServer(ctx, conn); err != nil {
		return false, err
	}
	// The lock lives with this connection, the one that streams: it is
	// released when the stream ends, however it ends.
	locked, err := simpleValue(ctx, conn, "SELECT pg_try_advisory_lock("+strconv.FormatInt(r.lockKey, 10)+")")
	if err != nil {
		return false, fmt.Errorf("take the reader lock: %w", err)
	}
	if locked != "t" {
		return false, errStandby
	}
	info, err := checkSlot(ctx, conn, r.cfg.Slot)
	if err != nil {
		return false, err
	}
	r.checkRetained(&SlotStats{Slot: r.cfg.Slot, WALStatus: info.walStatus, RetainedBytes: info.retained, LagBytes: info.lag, SafeWALBytes: info.safe})
	if err := checkPublication(ctx, conn, r.cfg.Publication); err != nil {
		return false, err
	}
	diverted := map[string]time.Time{}
	if r.cfg.Table != nil {
		// The keys whose events wait in the table, also those a relay
		// that read the slot before wrote there: the stream's events of
		// these keys go to the table, behind them.
		keys, err := r.cfg.Table.UndeliveredKeys(ctx, nil)
		if err != nil {
			return false, fmt.Errorf("read the keys waiting in the outbox table: %w", err)
		}
		now := time.Now()
		for _, k := range keys {
			diverted[k] = now
		}
		r.divertedKeys.Store(int64(len(diverted)))
	}
	err = pglogrepl.StartReplication(ctx, conn, r.cfg.Slot, 0, pglogrepl.StartReplicationOptions{
		Mode: pglogrepl.LogicalReplication,
		PluginArgs: []string{
			"proto_version '1'",
			"publication_names '" + r.cfg.Publication + "'",
			"messages 'true'",
		},
	})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" {
			// Active for another process (not a relay holding the lock,
			// or one whose connection the server has not dropped yet).
			return false, errStandby
		}
		if lost := lostSlotError(r.cfg.Slot, err); lost != nil {
			return false, lost
		}
		return false, fmt.Errorf("START_REPLICATION: %w", err)
	}
	r.log.Info("walrelay: streaming", "slot", r.cfg.Slot, "publication", r.cfg.Publication, "prefix", r.cfg.Prefix)
	return true, r.stream(ctx, conn, diverted)
}

// simpleValue runs sql, a simple query returning one value, and returns
// the value's text.
func simpleValue(ctx context.Context, conn *pgconn.PgConn, sql string) (string, error) {
	res, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return "", fmt.Errorf("%s: expected one value", sql)
	}
	return string(res[0].Rows[0][0]), nil
}

// reader is the state of one stream: the transaction being read and what
// was confirmed to the server.
type reader struct {
	r    *Relay
	conn *pgconn.PgConn
	pipe *pipeline
	// open is set between a transaction's Begin and its Commit; rows are
	// the events read in it so far.
	open bool
	rows []outbox.Row
	// dispatched is the end of the last transaction handed to the
	// publisher.
	dispatched pglogrepl.LSN
	// idle is the furthest position known to hold nothing left to
	// publish once everything dispatched is published: the server's WAL
	// end from keepalives, and the end of transactions without events.
	idle pglogrepl.LSN
	// sent is the position last confirmed, at sentAt.
	sent   pglogrepl.LSN
	sentAt time.Time
}

// stream reads the replication stream until ctx ends or it fails, with a
// publisher goroutine publishing the committed transactions; diverted are
// the keys whose events go to the table.
func (r *Relay) stream(ctx context.Context, conn *pgconn.PgConn, diverted map[string]time.Time) error {
	rd := &reader{r: r, conn: conn, pipe: newPipeline(r.cfg.Forwarder.BatchSize), sentAt: time.Now()}
	pubCtx, stopPublisher := context.WithCancel(context.Background())
	defer stopPublisher()
	pb := &publisher{r: r, pipe: rd.pipe, ctx: pubCtx, held: map[string]*heldKey{}, diverted: diverted, failing: map[string]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pb.run()
	}()
	err := rd.read(ctx)
	if errors.Is(err, ErrUndecodable) {
		// Publish and confirm what came before the message, so the slot
		// stops right at it.
		rd.pipe.finish()
		timer := time.NewTimer(r.cfg.Forwarder.ShutdownTimeout)
		select {
		case <-done:
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
	}
	stopPublisher()
	// A publish call cannot be interrupted. After a failed stream the
	// next session waits for it, so that two publishers never run at
	// once; a shutdown waits ShutdownTimeout at most.
	select {
	case <-done:
	case <-ctx.Done():
		timer := time.NewTimer(r.cfg.Forwarder.ShutdownTimeout)
		defer timer.Stop()
		select {
		case <-done:
		case <-timer.C:
			r.log.Warn("walrelay: batch not published within ShutdownTimeout; its events stream again after a restart", "slot", r.cfg.Slot)
		}
	}
	r.heldRows.Store(0) // the next session streams them again
	// Confirm what was published, so a restart repeats as little as it
	// can. The connection may be gone; then the server keeps what it was
	// told last.
	if c := rd.pipe.confirmedLSN(); c > rd.sent {
		if serr := rd.sendStatus(c, false); serr != nil && err == nil && ctx.Err() == nil {
			err = serr
		}
	}
	return err
}

// target is the position to confirm: the end of the last transaction
// fully published, or, when nothing is open or waiting to be published,
// the furthest position known to hold nothing more to publish.
func (rd *reader) target() pglogrepl.LSN {
	c := rd.pipe.confirmedLSN()
	if !rd.open && c >= rd.dispatched {
		return max(c, rd.idle)
	}
	return c
}

// sendStatus confirms lsn to the server.
func (rd *reader) sendStatus(lsn pglogrepl.LSN, replyRequested bool) error {
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), rd.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn,
		ReplyRequested:   replyRequested,
	})
	if err != nil {
		return fmt.Errorf("send status update: %w", err)
	}
	rd.sent, rd.sentAt = lsn, time.Now()
	return nil
}

// nextStatus is when the next status update is due: StatusInterval after
// the last when there is progress to confirm, else a heartbeat; never
// more than a heartbeat after the last.
func (rd *reader) nextStatus(target pglogrepl.LSN) time.Time {
	if target > rd.sent {
		return rd.sentAt.Add(min(rd.r.cfg.StatusInterval, heartbeat))
	}
	return rd.sentAt.Add(heartbeat)
}

// read reads the stream until ctx ends (it returns nil then) or the
// stream fails.
//
// It waits for the next message until the next status update is due
// with a read deadline on the connection, not with a context per
// message, which would cost a timer and a watcher per event; the end of
// ctx moves the deadline to the past.
func (rd *reader) read(ctx context.Context) error {
	nc := rd.conn.Conn()
	stopCancel := context.AfterFunc(ctx, func() { _ = nc.SetReadDeadline(time.Unix(1, 0)) })
	defer stopCancel()
	var deadline time.Time
	for {
		target := rd.target()
		due := rd.nextStatus(target)
		if !time.Now().Before(due) {
			if err := rd.sendStatus(target, false); err != nil {
				return err
			}
			continue
		}
		if !due.Equal(deadline) {
			if err := nc.SetReadDeadline(due); err != nil {
				return fmt.Errorf("set read deadline: %w", err)
			}
			deadline = due
		}
		// Checked after setting the deadline: a later end of ctx sets its
		// own deadline after this one.
		if ctx.Err() != nil {
			return nil
		}
		msg, err := rd.conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := rd.copyData(ctx, msg.Data); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		case *pgproto3.ErrorResponse:
			err := pgconn.ErrorResponseToPgError(msg)
			if lost := lostSlotError(rd.r.cfg.Slot, err); lost != nil {
				return lost
			}
			return fmt.Errorf("replication stream: %w", err)
		case *pgproto3.CopyDone:
			return errors.New("replication stream: the server ended it")
		}
	}
}

// copyData handles one message of the stream.
func (rd *reader) copyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("keepalive: %w", err)
		}
		rd.idle = max(rd.idle, pkm.ServerWALEnd)
		if pkm.ReplyRequested {
			return rd.sendStatus(rd.target(), false)
		}
		return nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("XLogData: %w", err)
		}
		return rd.walData(ctx, xld)
	}
	return nil
}

// walData handles one pgoutput message.
func (rd *reader) walData(ctx context.Context, xld pglogrepl.XLogData) error {
	if len(xld.WALData) == 0 {
		return nil
	}
	// Of pgoutput's messages only these matter; a publication with no
	// tables sends no others, and pglogrepl.Parse would decode them all.
	switch pglogrepl.MessageType(xld.WALData[0]) {
	case pglogrepl.MessageTypeBegin, pglogrepl.MessageTypeCommit, pglogrepl.MessageTypeMessage:
	default:
		return nil
	}
	m, err := pglogrepl.Parse(xld.WALData)
	if err != nil {
		return fmt.Errorf("pgoutput message at %s: %w", xld.WALStart, err)
	}
	switch m := m.(type) {
	case *pglogrepl.BeginMessage:
		rd.open = true
		rd.rows = nil
	case *pglogrepl.LogicalDecodingMessage:
		if m.Prefix != rd.r.cfg.Prefix {
			return nil
		}
		if !m.Transactional {
			// Written outside any transaction's fate: not an outbox event.
			rd.r.log.Error("walrelay: skipped a non-transactional message with the relay's prefix (events are written with pg_logical_emit_message(true, ...))", "lsn", m.LSN, "prefix", m.Prefix, "bytes", len(m.Content))
			return nil
		}
		// Decode copies: Content points into the connection's buffer.
		events, err := walmsg.Decode(m.Content)
		if err != nil {
			return fmt.Errorf("%w at %s: %w", ErrUndecodable, m.LSN, err)
		}
		for i := range events {
			rd.r.nextID++
			rd.rows = append(rd.rows, events[i].Row(rd.r.nextID))
		}
	case *pglogrepl.CommitMessage:
		rd.open = false
		end := m.TransactionEndLSN
		if len(rd.rows) == 0 {
			rd.idle = max(rd.idle, end)
			return nil
		}
		t := txn{rows: rd.rows, end: end}
		rd.rows = nil
		if err := rd.dispatch(ctx, t); err != nil {
			return err
		}
		rd.dispatched = end
	}
	return nil
}

// dispatch hands t to the publisher, waiting while the publisher is a
// full queue behind; it keeps confirming progress meanwhile.
func (rd *reader) dispatch(ctx context.Context, t txn) error {
	for !rd.pipe.add(t) {
		target := rd.target()
		wait := time.Until(rd.nextStatus(target))
		if wait <= 0 {
			if err := rd.sendStatus(target, false); err != nil {
				return err
			}
			continue
		}
		timer := time.NewTimer(wait)
		select {
		case <-rd.pipe.space:
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		}
		timer.Stop()
	}
	return nil
}
