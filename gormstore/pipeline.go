package gormstore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	sqldriver "database/sql/driver"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/txoutbox/txoutbox/internal/walmsg"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// errPrepareStmt is returned for a prepared statement inside a command
// whose transaction runs on a pinned connection.
var errPrepareStmt = errors.New("gormstore: prepared statements (gorm.Session{PrepareStmt: true}) are not supported inside a command whose commit is pipelined: GORM would run them outside the transaction; drop PrepareStmt in the handler, or set gormstore.Config.NoPipeline")

// errHandlerEnds is returned by Commit and Rollback of the command's
// transaction: the store ends it.
var errHandlerEnds = errors.New("gormstore: the command's transaction is committed or rolled back by the transactional middleware, not by the handler")

// cancelWait bounds how long a cancel request sent to PostgreSQL may take.
const cancelWait = 5 * time.Second

// RunTx implements outbox.TxRunner; the transactional middleware calls it
// for each top-level command. On PostgreSQL through pgx (unless
// Config.NoPipeline) the transaction runs on a connection held for the
// command, and the INSERT of its records is sent with the COMMIT in one
// round trip; see [Config.NoPipeline] for what that changes for a
// handler. On other databases it is a GORM transaction (db.Transaction)
// in which Save writes the records before the commit.
func (s *Store) RunTx(ctx context.Context, db *gorm.DB, opts *sql.TxOptions, fn outbox.TxFunc) error {
	return s.drv.runTx(ctx, db, opts, fn)
}

// runTxSave is driver.runTx in a GORM transaction in which Save writes
// the records.
func (s *Store) runTxSave(ctx context.Context, db *gorm.DB, opts *sql.TxOptions, fn outbox.TxFunc) error {
	return outbox.RunTx(ctx, db, saver{s}, opts, fn)
}

// runTx pipelines the commit when db runs on pgx and the store may.
func (d *postgresDriver) runTx(ctx context.Context, db *gorm.DB, opts *sql.TxOptions, fn outbox.TxFunc) error {
	if !d.s.cfg.NoPipeline {
		if sqlDB, err := db.DB(); err == nil {
			if _, ok := sqlDB.Driver().(*stdlib.Driver); ok {
				return d.runPipelined(ctx, db, sqlDB, opts, fn)
			}
		}
	}
	return d.s.runTxSave(ctx, db, opts, fn)
}

// saver is a Store seen as an outbox.Store only, so that outbox.RunTx
// saves through it in a GORM transaction.
type saver struct{ s *Store }

func (v saver) Save(ctx context.Context, tx *gorm.DB, records []outbox.Record) error {
	return v.s.Save(ctx, tx, records)
}

// pinnedTx is the gorm.ConnPool of a command's transaction on a held
// connection. It is a gorm.TxCommitter, so GORM treats the handler's
// *gorm.DB as a transaction: nested Transaction calls are savepoints and
// Create runs no transaction of its own. It is also a gorm.Tx, so that a
// PrepareStmt session inside the handler reaches PrepareContext and
// StmtContext, which refuse, rather than run its statements on the pool
// outside the transaction.
type pinnedTx struct {
	conn *sql.Conn
	mu   sync.Mutex
	// refused is the first thing the handler tried that the pinned
	// connection cannot do; the command then fails.
	refused error
}

var _ gorm.Tx = (*pinnedTx)(nil)

func (p *pinnedTx) refuse(err error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.refused == nil {
		p.refused = err
	}
	return err
}

func (p *pinnedTx) err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
}

func (p *pinnedTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return p.conn.ExecContext(ctx, query, args...)
}

func (p *pinnedTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return p.conn.QueryContext(ctx, query, args...)
}

func (p *pinnedTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return p.conn.QueryRowContext(ctx, query, args...)
}

// PrepareContext refuses: GORM prepares statements only for PrepareStmt
// sessions, whose statement cache is shared with the pool.
func (p *pinnedTx) PrepareContext(context.Context, string) (*sql.Stmt, error) {
	return nil, p.refuse(errPrepareStmt)
}

// StmtContext is reached by a PrepareStmt session for a statement the
// pool prepared earlier. The statement cannot move to the held
// connection, so it returns a closed statement (its use fails with
// "sql: statement is closed") and the command fails with errPrepareStmt.
func (p *pinnedTx) StmtContext(ctx context.Context, _ *sql.Stmt) *sql.Stmt {
	_ = p.refuse(errPrepareStmt)
	st, err := p.conn.PrepareContext(ctx, "SELECT 1")
	if err == nil {
		_ = st.Close()
	}
	return st
}

func (p *pinnedTx) Commit() error   { return p.refuse(errHandlerEnds) }
func (p *pinnedTx) Rollback() error { return p.refuse(errHandlerEnds) }

// beginSQL is the BEGIN of a transaction with opts, as pgx writes it.
func beginSQL(opts *sql.TxOptions) (string, error) {
	if opts == nil {
		return "BEGIN", nil
	}
	q := "BEGIN"
	switch opts.Isolation {
	case sql.LevelDefault:
	case sql.LevelReadUncommitted:
		q += " ISOLATION LEVEL READ UNCOMMITTED"
	case sql.LevelReadCommitted:
		q += " ISOLATION LEVEL READ COMMITTED"
	case sql.LevelRepeatableRead, sql.LevelSnapshot:
		q += " ISOLATION LEVEL REPEATABLE READ"
	case sql.LevelSerializable:
		q += " ISOLATION LEVEL SERIALIZABLE"
	default:
		return "", fmt.Errorf("gormstore: isolation level %v is not supported on PostgreSQL", opts.Isolation)
	}
	if opts.ReadOnly {
		q += " READ ONLY"
	}
	return q, nil
}

// runPipelined runs fn in a transaction on a connection of sqlDB held for
// the command: BEGIN, the handler's statements, then the INSERT of the
// records and the COMMIT in one pipeline (commitPipelined).
func (d *postgresDriver) runPipelined(ctx context.Context, db *gorm.DB, sqlDB *sql.DB, opts *sql.TxOptions, fn outbox.TxFunc) (err error) {
	begin, err := beginSQL(opts)
	if err != nil {
		return err
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, begin); err != nil {
		return err
	}
	p := &pinnedTx{conn: conn}
	tx := db.WithContext(ctx)
	tx.Statement.ConnPool = p
	ended := false
	defer func() {
		if !ended { // fn failed or panicked
			rollbackPinned(ctx, conn)
		}
	}()
	recs, err := fn(tx)
	if err != nil {
		return err
	}
	if err := p.err(); err != nil {
		return err
	}
	ended = true
	return d.commitPipelined(ctx, conn, recs)
}

// rollbackPg rolls back the transaction on pc, also after ctx is done.
func rollbackPg(ctx context.Context, pc *pgconn.PgConn) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelWait)
	defer cancel()
	return pc.Exec(rctx, "ROLLBACK").Close()
}

// rollbackPinned rolls back the transaction on conn, also after ctx is
// done; a connection whose ROLLBACK fails is discarded.
func rollbackPinned(ctx context.Context, conn *sql.Conn) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelWait)
	defer cancel()
	if _, err := conn.ExecContext(rctx, "ROLLBACK"); err != nil {
		_ = conn.Raw(func(any) error { return errBadConn })
	}
}

// commitPipelined ends the transaction on conn: it saves recs and commits
// in one round trip, or rolls back when a statement of the command failed
// (a failed transaction whose error the handler ignored) or ctx is done.
//
// The INSERT and the COMMIT go out together, then one Sync (a batch of
// the extended protocol: one write, one round trip). If the INSERT fails,
// the server skips the COMMIT and the transaction is aborted: a ROLLBACK
// follows, and the connection is reused. Once sent they are not
// interrupted by ctx, as database/sql does not interrupt a COMMIT:
// when ctx is done while they run, a cancel request stops the INSERT if
// it still runs (the transaction then rolls back and ctx's error is
// returned), and the answers say exactly what happened. A connection
// lost after the COMMIT was sent leaves the outcome unknown:
// outbox.ErrCommitUnknown.
func (d *postgresDriver) commitPipelined(ctx context.Context, conn *sql.Conn, recs []outbox.Record) error {
	if err := ctx.Err(); err != nil {
		rollbackPinned(ctx, conn)
		return err
	}
	var result error
	rawErr := conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			result = errNotPgx
			return errBadConn
		}
		var discard bool
		discard, result = d.pipeline(ctx, sc.Conn(), recs)
		if discard {
			return errBadConn
		}
		return nil
	})
	if result == nil && rawErr != nil && !errors.Is(rawErr, sqldriver.ErrBadConn) {
		return rawErr
	}
	return result
}

// pipeline sends the INSERT of recs (if any) and the COMMIT on c, a
// connection in a transaction, in one batch, and reads their answers. It
// returns whether c must be discarded, and the command's error.
func (d *postgresDriver) pipeline(ctx context.Context, c *pgx.Conn, recs []outbox.Record) (discard bool, err error) {
	pc := c.PgConn()
	switch pc.TxStatus() {
	case 'T':
	case 'E':
		if err := rollbackPg(ctx, pc); err != nil {
			return true, fmt.Errorf("gormstore: a statement of the command failed and its error was ignored: %w; rollback: %v", pgx.ErrTxCommitRollback, err)
		}
		return false, fmt.Errorf("gormstore: a statement of the command failed and its error was ignored: %w", pgx.ErrTxCommitRollback)
	default:
		return false, errors.New("gormstore: the command's transaction ended before its commit (did the handler run COMMIT or ROLLBACK?)")
	}
	var insert *insertParams
	if len(recs) > 0 {
		var err error
		if d.s.wal != nil {
			insert, err = d.emitParams(ctx, pc, recs)
		} else {
			insert, err = d.insertParams(recs)
		}
		if err == nil {
			insert.stmt, err = preparedOn(ctx, c, insert.query)
		}
		if err != nil {
			discard := pc.IsClosed() || rollbackPg(ctx, pc) != nil
			if ctx.Err() != nil {
				return discard, fmt.Errorf("gormstore: commit cancelled, rolled back: %w (%w)", ctx.Err(), err)
			}
			return discard, err
		}
	}

	var cancelled atomic.Bool
	stop := func() bool { return true }
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() {
			cancelled.Store(true)
			cctx, cancel := context.WithTimeout(context.Background(), cancelWait)
			defer cancel()
			_ = pc.CancelRequest(cctx)
		})
	}
	var b pgconn.Batch
	switch {
	case insert == nil:
	case insert.stmt != nil:
		b.ExecPrepared(insert.stmt.Name, insert.values[:len(insert.oids)], insert.formats, nil)
	default:
		b.ExecParams(insert.query, insert.values[:len(insert.oids)], insert.oids, insert.formats, nil)
	}
	b.ExecParams("COMMIT", nil, nil, nil, nil)
	mrr := pc.ExecBatch(context.WithoutCancel(ctx), &b)
	var tags [2]pgconn.CommandTag
	n := 0 // statements that completed: the INSERT, then the COMMIT
	for mrr.NextResult() {
		tag, _ := mrr.ResultReader().Close()
		if n < len(tags) {
			tags[n] = tag
		}
		n++
	}
	err = mrr.Close()
	if !stop() {
		// The cancel request is under way or done; it must not reach a
		// later statement on this connection.
		cancelled.Store(true)
	}
	discard = cancelled.Load() || pc.IsClosed()
	done := n // of the INSERT and the COMMIT
	if insert == nil {
		done++
	}
	switch {
	case err == nil && done == 2:
		if tag := tags[min(n, len(tags))-1].String(); tag != "COMMIT" {
			return discard || pc.TxStatus() != 'I', fmt.Errorf("gormstore: COMMIT answered %q: %w", tag, pgx.ErrTxCommitRollback)
		}
		return discard || pc.TxStatus() != 'I', nil
	case err == nil:
		return true, fmt.Errorf("%w: %d of 2 statements answered", outbox.ErrCommitUnknown, done)
	case !isServerError(err) || done == 1 && isFatal(err):
		// No answer, or the session ended, after the COMMIT was sent.
		return true, fmt.Errorf("%w: %w", outbox.ErrCommitUnknown, err)
	}
	// A statement failed: if it is the INSERT, the COMMIT did not run and
	// the transaction is aborted.
	if pc.TxStatus() == 'E' && rollbackPg(ctx, pc) != nil {
		discard = true
	}
	discard = discard || pc.IsClosed() || pc.TxStatus() != 'I'
	if ctx.Err() != nil {
		return discard, fmt.Errorf("gormstore: commit cancelled, rolled back: %w (%w)", ctx.Err(), err)
	}
	if done == 0 && insert != nil && insert.stmt != nil && isCode(err, "26000") {
		// The server lost the prepared statement (DISCARD ALL, a pooler
		// that moved the session): forget it, so that the next command
		// prepares it again, and let this one run again.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelWait)
		defer cancel()
		if c.Deallocate(rctx, insert.stmt.Name) != nil {
			discard = true
		}
		return discard, fmt.Errorf("gormstore: %w: %w", errStatementLost, err)
	}
	if done == 0 {
		if d.s.wal != nil {
			return discard, fmt.Errorf("gormstore: emit the events: %w", err)
		}
		return discard, d.s.insertError(err)
	}
	return discard, err
}

// errStatementLost marks a command that failed because the server no
// longer had the store's prepared statement; it may run again
// (retryablePostgres).
var errStatementLost = errors.New("the prepared statement was gone from the server; it is prepared again for the next command")

// preparedOn returns q prepared on c under a name of its own, when c
// prepares the statements it runs (pgx's default
// QueryExecModeCacheStatement): Prepare sends it once per connection and
// answers from c's cache after that. PostgreSQL then parses and plans the
// INSERT once per connection instead of at each command (at 8 commands in
// flight an unnamed INSERT ... SELECT FROM unnest cut the transactions per
// second by about a quarter). A connection configured not to prepare
// (QueryExecModeExec, SimpleProtocol, CacheDescribe, DescribeExec: for a
// pooler that keeps no prepared statements) gets nil: the statement is
// then sent unnamed, with its parameters' types.
func preparedOn(ctx context.Context, c *pgx.Conn, q string) (*pgconn.StatementDescription, error) {
	if c.Config().DefaultQueryExecMode != pgx.QueryExecModeCacheStatement {
		return nil, nil
	}
	name, ok := statementNames.Load(q)
	if !ok {
		sum := sha256.Sum256([]byte(q))
		name, _ = statementNames.LoadOrStore(q, "txoutbox_"+hex.EncodeToString(sum[:8]))
	}
	sd, err := c.Prepare(ctx, name.(string), q)
	if err != nil {
		return nil, fmt.Errorf("gormstore: prepare %q: %w", q, err)
	}
	return sd, nil
}

// statementNames holds the name preparedOn prepares each statement under.
var statementNames sync.Map // query → name

// isCode reports a PostgreSQL error with SQLSTATE code.
func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// isServerError reports an error PostgreSQL sent: the statement failed,
// and the server's answers to what follows are still read.
func isServerError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr)
}

// isFatal reports an error that ended the server's session: sent in
// answer to a COMMIT, it leaves the outcome unknown.
func isFatal(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Severity == "FATAL" || pgErr.Severity == "PANIC")
}

// insertParams is the statement that writes a command's records (the
// INSERT, or in WAL mode the logical decoding message) and its
// parameters, in binary.
type insertParams struct {
	query string
	// stmt is query prepared on the connection, nil to send it unnamed.
	stmt    *pgconn.StatementDescription
	values  [5][]byte
	oids    []uint32
	formats []int16
}

// insertOIDs are the types of the insert statement's parameters: one
// array per column (text, text, text, bytea, jsonb).
var insertOIDs = []uint32{pgtype.TextArrayOID, pgtype.TextArrayOID, pgtype.TextArrayOID, pgtype.ByteaArrayOID, pgtype.JSONBArrayOID}

// insertFormats sends every parameter in binary.
var insertFormats = []int16{pgtype.BinaryFormatCode, pgtype.BinaryFormatCode, pgtype.BinaryFormatCode, pgtype.BinaryFormatCode, pgtype.BinaryFormatCode}

// insertOneOIDs are the types of insert_one's parameters.
var insertOneOIDs = []uint32{pgtype.TextOID, pgtype.TextOID, pgtype.TextOID, pgtype.ByteaOID, pgtype.JSONBOID}

// insertElemOIDs are the element types of insertOIDs.
var insertElemOIDs = [5]uint32{pgtype.TextOID, pgtype.TextOID, pgtype.TextOID, pgtype.ByteaOID, pgtype.JSONBOID}

// jsonbVersion leads a jsonb value in binary.
const jsonbVersion = 1

// insertParams encodes the statement that saves recs, all in one INSERT:
// the five arrays in PostgreSQL's binary array format (a header, then
// each element's length and bytes; a jsonb element is its version byte
// and the JSON text), written into one buffer.
func (d *postgresDriver) insertParams(recs []outbox.Record) (*insertParams, error) {
	const header = 20 // ndim, flags, element type, length, lower bound
	size := 5 * header
	for i, r := range recs {
		if r.Message == nil {
			return nil, fmt.Errorf("gormstore: record %d has no message", i)
		}
		// Lengths, version byte, and a guess at the metadata's JSON.
		size += 5*4 + 1 + len(r.Message.UUID) + len(r.Topic) + len(r.PartitionKey) + len(r.Message.Payload) + 32*len(r.Message.Metadata) + 2
	}
	buf := make([]byte, 0, size)
	if len(recs) == 1 {
		r := recs[0]
		ip := &insertParams{query: d.s.sql["insert_one"], oids: insertOneOIDs, formats: insertFormats}
		var ends [5]int // where each parameter ends in buf
		buf = append(buf, r.Message.UUID...)
		ends[0] = len(buf)
		buf = append(buf, r.Topic...)
		ends[1] = len(buf)
		buf = append(buf, r.PartitionKey...)
		ends[2] = len(buf)
		buf = append(buf, r.Message.Payload...)
		ends[3] = len(buf)
		buf = append(buf, jsonbVersion)
		buf = appendMetadata(buf, r.Message.Metadata)
		ends[4] = len(buf)
		start := 0
		for i, end := range ends {
			ip.values[i] = buf[start:end:end]
			start = end
		}
		return ip, nil
	}
	ip := &insertParams{query: d.s.sql["insert"], oids: insertOIDs, formats: insertFormats}
	for col := range 5 {
		start := len(buf)
		buf = binary.BigEndian.AppendUint32(buf, 1) // one dimension
		buf = binary.BigEndian.AppendUint32(buf, 0) // no NULL
		buf = binary.BigEndian.AppendUint32(buf, insertElemOIDs[col])
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(recs)))
		buf = binary.BigEndian.AppendUint32(buf, 1) // lower bound
		for _, r := range recs {
			at := len(buf)
			buf = append(buf, 0, 0, 0, 0) // the element's length, set below
			switch col {
			case 0:
				buf = append(buf, r.Message.UUID...)
			case 1:
				buf = append(buf, r.Topic...)
			case 2:
				buf = append(buf, r.PartitionKey...)
			case 3:
				buf = append(buf, r.Message.Payload...)
			case 4:
				buf = append(buf, jsonbVersion)
				buf = appendMetadata(buf, r.Message.Metadata)
			}
			n := len(buf) - at - 4
			if n > math.MaxInt32 {
				return nil, fmt.Errorf("gormstore: a column of record %s is %d bytes, more than PostgreSQL takes", r.Message.UUID, n)
			}
			binary.BigEndian.PutUint32(buf[at:], uint32(n))
		}
		ip.values[col] = buf[start:len(buf):len(buf)]
	}
	return ip, nil
}

// emitOIDs and emitFormats are the parameters of the statement "emit":
// the prefix as text and the frame as bytea, both in binary.
var (
	emitOIDs    = []uint32{pgtype.TextOID, pgtype.ByteaOID}
	emitFormats = []int16{pgtype.BinaryFormatCode, pgtype.BinaryFormatCode}
)

// emitParams encodes the logical decoding message that carries recs (WAL
// mode), after checking, once per store, that the database is ready for
// it (on pc, in the command's transaction).
func (d *postgresDriver) emitParams(ctx context.Context, pc *pgconn.PgConn, recs []outbox.Record) (*insertParams, error) {
	w := d.s.wal
	if !d.s.walReady.Load() {
		res := pc.ExecParams(ctx, d.s.sql["wal_ready"], [][]byte{[]byte(w.Slot)}, []uint32{pgtype.TextOID}, nil, nil).Read()
		if res.Err != nil {
			return nil, fmt.Errorf("gormstore: check the WAL mode: %w", res.Err)
		}
		if len(res.Rows) != 1 || len(res.Rows[0]) != 2 {
			return nil, errors.New("gormstore: check the WAL mode: unexpected answer")
		}
		if err := walReadyError(string(res.Rows[0][0]), string(res.Rows[0][1]) == "t", w.Slot); err != nil {
			return nil, err
		}
		d.s.walReady.Store(true)
	}
	content, err := walmsg.Encode(recs)
	if err != nil {
		return nil, fmt.Errorf("gormstore: %w", err)
	}
	ip := &insertParams{query: d.s.sql["emit"], oids: emitOIDs, formats: emitFormats}
	ip.values[0], ip.values[1] = []byte(w.Prefix), content
	return ip, nil
}
