package walrelay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// ErrSlotInvalidated stops a relay whose slot was invalidated: the server
// removed WAL that the slot still needed (it fell behind by more than
// max_slot_wal_keep_size), so the events written in that WAL can no
// longer be streamed. It wraps [ErrBadSlot].
var ErrSlotInvalidated = fmt.Errorf("%w: invalidated", ErrBadSlot)

// DefaultWarnRetainedBytes is the default Config.WarnRetainedBytes: 1 GiB.
const DefaultWarnRetainedBytes = 1 << 30

// walEnd is the SQL of the server's WAL end: the current write position,
// or on a standby (a logical slot can be read there from PostgreSQL 16)
// the last position replayed.
const walEnd = "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END"

// slotCheckEvery is how often a running relay reads its slot's state, to
// warn when the slot retains more WAL than Config.WarnRetainedBytes.
const slotCheckEvery = time.Minute

// warnEvery bounds the warnings about retained WAL to one per interval.
const warnEvery = 5 * time.Minute

// slotLostError is the error of slot, invalidated; detail is what the
// server said, if anything.
func slotLostError(slot, detail string) error {
	msg := fmt.Sprintf("%v: replication slot %s lost WAL it still needed", ErrSlotInvalidated, slot)
	if detail != "" {
		msg += " (" + detail + ")"
	}
	msg += ": the events written since its confirmed position are gone from the stream and will not be relayed." +
		" Drop the slot (SELECT pg_drop_replication_slot('" + slot + "')) and create it again with walrelay.Setup;" +
		" events committed between the slot's last confirmed position and the new slot's creation must be recovered from the application." +
		" Set max_slot_wal_keep_size with room for the longest time a relay may be down, and watch the slot's retained WAL"
	return &slotLost{msg: msg}
}

// slotLost is an ErrSlotInvalidated with its explanation.
type slotLost struct{ msg string }

func (e *slotLost) Error() string { return e.msg }
func (e *slotLost) Unwrap() error { return ErrSlotInvalidated }

// lostSlotError returns the error of slot for a server error that says
// the slot was invalidated or its WAL removed, and nil for any other.
func lostSlotError(slot string, err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return nil
	}
	switch {
	case pgErr.Code == "55000" && strings.Contains(pgErr.Message, "can no longer get changes from replication slot"):
		// "This slot has been invalidated because it exceeded the maximum
		// reserved size." (and, from PostgreSQL 16, other causes).
		return slotLostError(slot, strings.TrimSpace(pgErr.Message+". "+pgErr.Detail))
	case pgErr.Code == "58P01" && strings.Contains(pgErr.Message, "has already been removed"):
		// "requested WAL segment ... has already been removed"
		return slotLostError(slot, pgErr.Message)
	}
	return nil
}

// SlotStats is the state of a relay's replication slot, and of the
// events the relay holds back from the stream.
type SlotStats struct {
	// Slot is the slot's name.
	Slot string
	// Active reports whether a relay streams from the slot now.
	Active bool
	// WALStatus is the slot's wal_status: "reserved" or "extended" (its
	// WAL is kept), "unreserved" (past max_slot_wal_keep_size: the WAL
	// may be removed at the next checkpoint), or "lost" (invalidated).
	WALStatus string
	// LagBytes is the WAL written since the slot's confirmed position
	// (pg_current_wal_lsn() - confirmed_flush_lsn): what a relay has yet
	// to read, or has read and not yet confirmed.
	LagBytes int64
	// RetainedBytes is the WAL the server keeps for the slot
	// (pg_current_wal_lsn() - restart_lsn).
	RetainedBytes int64
	// SafeWALBytes is how much more WAL can be written before the slot
	// is in danger of losing its WAL (safe_wal_size), -1 when
	// max_slot_wal_keep_size does not limit it.
	SafeWALBytes int64
	// OverThreshold reports RetainedBytes past Config.WarnRetainedBytes.
	OverThreshold bool
	// HeldEvents counts the events the running relay holds in memory: a
	// failed event waiting for its retry, and its key's later events.
	HeldEvents int64
	// DivertedKeys counts the partition keys whose events the running
	// relay writes to Config.Table, behind a parked event.
	DivertedKeys int64
	// ParkedEvents counts the events this relay parked in Config.Table
	// since it was created.
	ParkedEvents int64
}

// Stats reads the state of the relay's slot over a connection of its own
// (not a replication connection), and the relay's own counts. Past
// Config.WarnRetainedBytes it flags OverThreshold and logs a warning, at
// most every 5 minutes. It fails with an error wrapping [ErrNoSlot] for a
// missing slot.
func (r *Relay) Stats(ctx context.Context) (SlotStats, error) {
	cfg := r.connCfg.Copy()
	delete(cfg.RuntimeParams, "replication")
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return SlotStats{}, fmt.Errorf("walrelay: slot stats: connect: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	// r.cfg.Slot is a plain identifier (Validate).
	res, err := conn.Exec(ctx, `SELECT active, coalesce(wal_status, ''),
	coalesce((`+walEnd+` - confirmed_flush_lsn)::bigint, 0),
	coalesce((`+walEnd+` - restart_lsn)::bigint, 0),
	coalesce(safe_wal_size, -1)
FROM pg_replication_slots WHERE slot_name = '`+r.cfg.Slot+"'").ReadAll()
	if err != nil {
		return SlotStats{}, fmt.Errorf("walrelay: slot stats of %s: %w", r.cfg.Slot, err)
	}
	if len(res) != 1 || len(res[0].Rows) == 0 {
		return SlotStats{}, fmt.Errorf("%w: %s", ErrNoSlot, r.cfg.Slot)
	}
	row := res[0].Rows[0]
	st := SlotStats{
		Slot:         r.cfg.Slot,
		Active:       string(row[0]) == "t",
		WALStatus:    string(row[1]),
		HeldEvents:   r.heldRows.Load(),
		DivertedKeys: r.divertedKeys.Load(),
		ParkedEvents: r.parked.Load(),
	}
	for i, p := range []*int64{&st.LagBytes, &st.RetainedBytes, &st.SafeWALBytes} {
		if *p, err = strconv.ParseInt(string(row[2+i]), 10, 64); err != nil {
			return SlotStats{}, fmt.Errorf("walrelay: slot stats of %s: %w", r.cfg.Slot, err)
		}
	}
	r.checkRetained(&st)
	return st, nil
}

// checkRetained flags st past the threshold and warns, at most every
// warnEvery.
func (r *Relay) checkRetained(st *SlotStats) {
	st.OverThreshold = st.RetainedBytes > r.cfg.WarnRetainedBytes
	if !st.OverThreshold && st.WALStatus != "unreserved" && st.WALStatus != "lost" {
		return
	}
	now := time.Now().UnixNano()
	last := r.warnedAt.Load()
	if last != 0 && now-last < int64(warnEvery) || !r.warnedAt.CompareAndSwap(last, now) {
		return
	}
	r.log.Warn("walrelay: the replication slot retains much WAL: a relay is down or behind, and PostgreSQL keeps the WAL until the slot confirms it (see max_slot_wal_keep_size)",
		"slot", st.Slot, "retained_bytes", st.RetainedBytes, "lag_bytes", st.LagBytes, "wal_status", st.WALStatus,
		"safe_wal_bytes", st.SafeWALBytes, "warn_retained_bytes", r.cfg.WarnRetainedBytes, "active", st.Active)
}

// watchSlot reads the slot's state every slotCheckEvery until ctx ends,
// for the warning past WarnRetainedBytes.
func (r *Relay) watchSlot(ctx context.Context) {
	t := time.NewTicker(slotCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := r.Stats(ctx); err != nil && ctx.Err() == nil {
			r.log.Debug("walrelay: cannot read the slot's state", "slot", r.cfg.Slot, "error", err)
		}
	}
}

// instrumentationName names the meter of this package.
const instrumentationName = "github.com/txoutbox/txoutbox/walrelay"

// observeSlot registers the slot gauges on the meter provider of
// cfg.Forwarder, read with Stats at each collection, until the returned
// function is called.
func (r *Relay) observeSlot() (func(), error) {
	mp := r.cfg.Forwarder.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(instrumentationName)
	lag, err := m.Int64ObservableGauge("txoutbox.walrelay.slot.lag", metric.WithUnit("By"),
		metric.WithDescription("WAL written since the slot's confirmed position."))
	if err != nil {
		return nil, err
	}
	retained, err := m.Int64ObservableGauge("txoutbox.walrelay.slot.retained_wal", metric.WithUnit("By"),
		metric.WithDescription("WAL the server keeps for the slot."))
	if err != nil {
		return nil, err
	}
	safe, err := m.Int64ObservableGauge("txoutbox.walrelay.slot.safe_wal_size", metric.WithUnit("By"),
		metric.WithDescription("WAL that can still be written before the slot may lose WAL; not reported without max_slot_wal_keep_size."))
	if err != nil {
		return nil, err
	}
	held, err := m.Int64ObservableGauge("txoutbox.walrelay.held", metric.WithUnit("{message}"),
		metric.WithDescription("Events held in memory behind a failed event waiting for its retry."))
	if err != nil {
		return nil, err
	}
	diverted, err := m.Int64ObservableGauge("txoutbox.walrelay.diverted_keys", metric.WithUnit("{key}"),
		metric.WithDescription("Partition keys whose events go to the outbox table, behind a parked event."))
	if err != nil {
		return nil, err
	}
	reg, err := m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		attrs := metric.WithAttributes(attribute.String("txoutbox.slot", r.cfg.Slot))
		o.ObserveInt64(held, r.heldRows.Load(), attrs)
		o.ObserveInt64(diverted, r.divertedKeys.Load(), attrs)
		st, err := r.Stats(ctx)
		if err != nil {
			return err
		}
		o.ObserveInt64(lag, st.LagBytes, attrs)
		o.ObserveInt64(retained, st.RetainedBytes, attrs)
		if st.SafeWALBytes >= 0 {
			o.ObserveInt64(safe, st.SafeWALBytes, attrs)
		}
		return nil
	}, lag, retained, safe, held, diverted)
	if err != nil {
		return nil, err
	}
	return func() { _ = reg.Unregister() }, nil
}
