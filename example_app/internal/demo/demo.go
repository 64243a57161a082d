package demo

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/txoutbox/txoutbox/example_app/internal/app"
	"github.com/txoutbox/txoutbox/example_app/internal/httpapi"
	"github.com/txoutbox/txoutbox/example_app/internal/orders"
	"github.com/txoutbox/txoutbox/example_app/internal/readmodel"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/ctxtime"
	"github.com/txoutbox/txoutbox/middleware"
	"gorm.io/gorm"
)

// Defaults of Config.
const (
	DefaultOrders      = 1000
	DefaultConcurrency = 16
	DefaultTimeout     = 60 * time.Second
)

// maxListed bounds the failures listed in a Result.
const maxListed = 20

// Config configures a demo run.
type Config struct {
	// Orders is the number of orders to place. Optional; default
	// DefaultOrders.
	Orders int
	// Concurrency is the number of clients sending requests at once.
	// Optional; default DefaultConcurrency.
	Concurrency int
	// Timeout bounds the wait for the read model to catch up. Optional;
	// default DefaultTimeout.
	Timeout time.Duration
	// Prefix starts every order ID of the run, so the checks see this run's
	// orders only. Required.
	Prefix string
	// Progress receives a progress line every ProgressInterval while the
	// commands run and while the read model catches up. Optional; nil
	// prints none.
	Progress io.Writer
	// ProgressInterval is the time between progress lines. Optional;
	// default DefaultProgressInterval.
	ProgressInterval time.Duration
}

// DefaultProgressInterval is the default of Config.ProgressInterval.
const DefaultProgressInterval = time.Second

// Progress is what a run has done so far, as a progress line shows it.
type Progress struct {
	// Elapsed is the time since the run started.
	Elapsed time.Duration
	// Phase is "commands" while the commands are sent, "catch-up" while
	// the run waits for the read model, "checks" while it checks it.
	Phase string
	// Orders is the number of orders to place.
	Orders int
	// Placed, Paid and Cancelled count the commands accepted so far.
	Placed, Paid, Cancelled int64
	// Committed counts the events the outbox committed for the run's
	// orders.
	Committed int
	// Published counts the messages the forwarder published to the run's
	// topic (when the publish call returned: GoChannel delivers inside it,
	// so Published can trail Consumed); Consumed the messages the
	// read-model consumer processed.
	Published, Consumed int64
}

// String is the progress line, without a newline.
func (p Progress) String() string {
	return fmt.Sprintf("progress:    %3.0fs %s: orders %d/%d placed, %d paid, %d cancelled; events %d committed, %d published, %d consumed",
		p.Elapsed.Seconds(), p.Phase, p.Placed, p.Orders, p.Paid, p.Cancelled, p.Committed, p.Published, p.Consumed)
}

// committed is an event as the outbox committed it.
type committed struct {
	orderID string
	at      time.Time
}

// Recorder remembers the events committed for orders of one run. Pass its
// AfterCommit to app.Config.AfterCommit.
type Recorder struct {
	prefix string
	mu     sync.Mutex
	events map[string]committed // by message UUID
}

// NewRecorder returns a recorder of the events of orders whose ID starts
// with prefix.
func NewRecorder(prefix string) *Recorder {
	return &Recorder{prefix: prefix, events: map[string]committed{}}
}

// AfterCommit records the committed events of the run's orders and their
// commit time.
func (r *Recorder) AfterCommit(p middleware.AfterCommitParams) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range p.Records {
		if strings.HasPrefix(rec.PartitionKey, r.prefix) {
			r.events[rec.Message.UUID] = committed{orderID: rec.PartitionKey, at: now}
		}
	}
}

func (r *Recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

func (r *Recorder) snapshot() map[string]committed {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]committed, len(r.events))
	for k, v := range r.events {
		out[k] = v
	}
	return out
}

// Result is what a run did and found.
type Result struct {
	// Orders is the number of orders placed.
	Orders int
	// Commands counts the commands sent; Accepted those that succeeded;
	// Rejected those refused as the business rules say they must be
	// (404, 409, 400); Unexpected the answers that were not the ones
	// expected.
	Commands, Accepted, Rejected, Unexpected int64
	// Committed counts the events the outbox committed for the run's orders.
	Committed int
	// Published counts the messages the forwarder published to the run's
	// topic (more than Committed means the forwarder published some twice).
	Published int64
	// Projected counts the rows of projected_events for the run's orders.
	Projected int
	// InboxRows counts the inbox rows of the committed events.
	InboxRows int
	// Duplicates counts deliveries the inbox acked without applying.
	Duplicates int64
	// ConsumerErrors counts failed projection attempts (retried).
	ConsumerErrors int64
	// P50, P99 and Max are commit-to-projection latencies.
	P50, P99, Max time.Duration
	// Load is the time the commands took; CatchUp the wait after them.
	Load, CatchUp time.Duration
	// Failures lists what went wrong (the first few of each kind).
	Failures []string
}

// OK reports whether every event arrived exactly once in the read model
// and every answer was the expected one.
func (r Result) OK() bool { return len(r.Failures) == 0 }

// Print writes the summary.
func (r Result) Print(w io.Writer) {
	rate := 0.0
	if r.Load > 0 {
		rate = float64(r.Commands) / r.Load.Seconds()
	}
	fmt.Fprintf(w, "commands:    %d sent, %d accepted, %d rejected as the rules require, %d unexpected answers\n",
		r.Commands, r.Accepted, r.Rejected, r.Unexpected)
	fmt.Fprintf(w, "events:      %d committed, %d published, %d projected; inbox: %d rows, %d duplicate deliveries skipped; %d consumer errors retried\n",
		r.Committed, r.Published, r.Projected, r.InboxRows, r.Duplicates, r.ConsumerErrors)
	fmt.Fprintf(w, "latency:     commit to projection p50 %v, p99 %v, max %v\n", round(r.P50), round(r.P99), round(r.Max))
	fmt.Fprint(w, "             (per event: from its command's commit to its projection, through relay, broker and consumer, queueing included)\n")
	fmt.Fprintf(w, "time:        %v for the commands (%.0f commands/s), %v more for the read model to catch up\n",
		round(r.Load), rate, round(r.CatchUp))
	if r.OK() {
		fmt.Fprintf(w, "result:      OK: all %d events of %d orders arrived exactly once in the read model\n", r.Committed, r.Orders)
		return
	}
	fmt.Fprintf(w, "result:      FAILED (%d problems)\n", len(r.Failures))
	for _, f := range r.Failures {
		fmt.Fprintf(w, "  - %s\n", f)
	}
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// Run places cfg.Orders orders through the HTTP API at baseURL, pays or
// cancels each, tries what the rules forbid, waits until the read model has
// caught up, and checks the read model, the projection log and the inbox
// in db. a is the app serving baseURL and rec the recorder in its
// AfterCommit hooks. Run returns an error only when it could not run;
// what it found wrong is in Result.Failures.
func Run(ctx context.Context, a *app.App, db *gorm.DB, baseURL string, rec *Recorder, cfg Config) (Result, error) {
	cfg.Orders = cmp.Or(cfg.Orders, DefaultOrders)
	cfg.Concurrency = cmp.Or(cfg.Concurrency, DefaultConcurrency)
	cfg.Timeout = cmp.Or(cfg.Timeout, DefaultTimeout)
	if cfg.Orders < 0 || cfg.Concurrency < 0 || cfg.Timeout < 0 || cfg.Prefix == "" {
		return Result{}, fmt.Errorf("demo: bad config %+v", cfg)
	}
	c := &client{
		base: strings.TrimRight(baseURL, "/"),
		http: &http.Client{
			Timeout:   30 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Concurrency, MaxIdleConns: cfg.Concurrency},
		},
	}
	defer c.http.CloseIdleConnections()
	res := Result{Orders: cfg.Orders}

	// The load.
	start := time.Now()
	var phase atomic.Value
	phase.Store("commands")
	stopProgress := c.progress(cfg, func() Progress {
		return Progress{
			Elapsed: time.Since(start), Phase: phase.Load().(string), Orders: cfg.Orders,
			Placed: c.placed.Load(), Paid: c.paid.Load(), Cancelled: c.cancelled.Load(),
			Committed: rec.count(), Published: a.Published(a.Topic()), Consumed: a.Consumer.Stats().Processed,
		}
	})
	defer stopProgress()
	want := c.load(ctx, cfg)
	res.Load = time.Since(start)
	phase.Store("catch-up")
	res.Commands, res.Accepted, res.Rejected, res.Unexpected = c.commands.Load(), c.accepted.Load(), c.rejected.Load(), c.unexpected.Load()
	c.mu.Lock()
	res.Failures = append(res.Failures, c.failures...)
	c.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return res, err
	}

	// The wait: until every committed event is projected and nothing of
	// the topic waits in the outbox.
	events := rec.snapshot()
	res.Committed = len(events)
	catchUp := time.Now()
	deadline := time.Now().Add(cfg.Timeout)
	var projected int64
	for {
		if err := db.WithContext(ctx).Model(&readmodel.ProjectedEvent{}).
			Where("order_id LIKE ?", cfg.Prefix+"%").Count(&projected).Error; err != nil {
			return res, fmt.Errorf("demo: count projected events: %w", err)
		}
		st, err := a.Store.Stats(ctx)
		if err != nil {
			return res, fmt.Errorf("demo: outbox stats: %w", err)
		}
		ts := st.Topics[a.Topic()]
		if projected >= int64(len(events)) && ts.Pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			res.Failures = append(res.Failures, fmt.Sprintf("the read model did not catch up within %v: %d of %d events projected, %d pending and %d failed in the outbox",
				cfg.Timeout, projected, len(events), ts.Pending, ts.Failed))
			break
		}
		if !ctxtime.Sleep(ctx, 10*time.Millisecond) {
			return res, ctx.Err()
		}
	}
	res.CatchUp = time.Since(catchUp)
	phase.Store("checks")
	res.Published = a.Published(a.Topic())
	cs := a.Consumer.Stats()
	res.Duplicates, res.ConsumerErrors = cs.Duplicates, cs.Failures

	// The checks.
	res.Failures = append(res.Failures, check(ctx, db, c, cfg, events, want, &res)...)
	if st, err := a.Store.Stats(ctx); err == nil && st.Topics[a.Topic()].Failed > 0 {
		res.Failures = append(res.Failures, fmt.Sprintf("%d events of the topic are parked as failed in the outbox", st.Topics[a.Topic()].Failed))
	}
	stopProgress()
	return res, nil
}

// expectation is an order's planned final state.
type expectation struct {
	status orders.Status
	events int
}

// load sends the commands and returns each order's expected final state.
// Order i is placed, then, by i mod 6: paid; paid and paid again (409);
// paid and cancelled (409); cancelled and paid (409); cancelled and
// cancelled again (409); paid. A few requests that must fail come first.
func (c *client) load(ctx context.Context, cfg Config) map[string]expectation {
	unknown := cfg.Prefix + "-unknown"
	c.expect(ctx, "POST", "/orders/"+unknown+"/pay", nil, http.StatusNotFound)
	c.expect(ctx, "POST", "/orders/"+unknown+"/cancel", nil, http.StatusNotFound)
	c.expect(ctx, "POST", "/orders", httpapi.PlaceRequest{Customer: "nobody", AmountCents: 0}, http.StatusBadRequest)

	want := make(map[string]expectation, cfg.Orders)
	for i := range cfg.Orders {
		id := fmt.Sprintf("%s-%d", cfg.Prefix, i)
		st := orders.StatusPaid
		if m := i % 6; m == 3 || m == 4 {
			st = orders.StatusCancelled
		}
		want[id] = expectation{status: st, events: 2}
	}

	work := make(chan int)
	var wg sync.WaitGroup
	for range min(cfg.Concurrency, max(cfg.Orders, 1)) {
		wg.Go(func() {
			for i := range work {
				c.order(ctx, cfg.Prefix, i)
			}
		})
	}
	for i := range cfg.Orders {
		select {
		case work <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	if cfg.Orders > 0 && ctx.Err() == nil {
		c.expect(ctx, "POST", fmt.Sprintf("/orders/%s-0/pay", cfg.Prefix), nil, http.StatusConflict)
	}
	return want
}

// progress writes get's line to cfg.Progress every cfg.ProgressInterval
// until the returned function is called (more calls do nothing).
func (c *client) progress(cfg Config, get func() Progress) (stop func()) {
	if cfg.Progress == nil {
		return func() {}
	}
	every := cmp.Or(cfg.ProgressInterval, DefaultProgressInterval)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintln(cfg.Progress, get())
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			<-finished
		})
	}
}

// order runs the commands of order i.
func (c *client) order(ctx context.Context, prefix string, i int) {
	id := fmt.Sprintf("%s-%d", prefix, i)
	place := httpapi.PlaceRequest{ID: id, Customer: fmt.Sprintf("customer-%d", i%97), AmountCents: int64(100 + i%5000)}
	if !c.expect(ctx, "POST", "/orders", place, http.StatusCreated) {
		return
	}
	c.placed.Add(1)
	pay, cancel := "/orders/"+id+"/pay", "/orders/"+id+"/cancel"
	reason := httpapi.CancelRequest{Reason: "changed my mind"}
	paid := func() bool { return c.count(&c.paid, c.expect(ctx, "POST", pay, nil, http.StatusOK)) }
	cancelled := func() bool { return c.count(&c.cancelled, c.expect(ctx, "POST", cancel, reason, http.StatusOK)) }
	switch i % 6 {
	case 0, 5:
		paid()
	case 1:
		_ = paid() && c.expect(ctx, "POST", pay, nil, http.StatusConflict)
	case 2:
		_ = paid() && c.expect(ctx, "POST", cancel, reason, http.StatusConflict)
	case 3:
		_ = cancelled() && c.expect(ctx, "POST", pay, nil, http.StatusConflict)
	case 4:
		_ = cancelled() && c.expect(ctx, "POST", cancel, nil, http.StatusConflict)
	}
}

// count adds one to n when ok, and returns ok.
func (c *client) count(n *atomic.Int64, ok bool) bool {
	if ok {
		n.Add(1)
	}
	return ok
}

// client sends the demo's requests and counts the answers.
type client struct {
	base string
	http *http.Client

	commands, accepted, rejected, unexpected atomic.Int64
	// placed, paid and cancelled count the accepted commands, for the
	// progress line.
	placed, paid, cancelled atomic.Int64

	mu       sync.Mutex
	failures []string
}

func (c *client) fail(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.failures) < maxListed {
		c.failures = append(c.failures, fmt.Sprintf(format, args...))
	}
}

// expect sends a command and reports whether it got the status wanted.
func (c *client) expect(ctx context.Context, method, path string, body any, want int) bool {
	c.commands.Add(1)
	status, text, err := c.do(ctx, method, path, body, nil)
	switch {
	case err != nil:
		c.unexpected.Add(1)
		if ctx.Err() == nil {
			c.fail("%s %s: %v", method, path, err)
		}
		return false
	case status != want:
		c.unexpected.Add(1)
		c.fail("%s %s: got %d %s, want %d", method, path, status, strings.TrimSpace(text), want)
		return false
	case status < 300:
		c.accepted.Add(1)
	default:
		c.rejected.Add(1)
	}
	return true
}

// do sends a request and returns the status and body; out, when not nil,
// receives the decoded JSON body of a 200.
func (c *client) do(ctx context.Context, method, path string, body, out any) (int, string, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, "", err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, "", err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", err
	}
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, string(b), err
		}
	}
	return resp.StatusCode, string(b), nil
}

// check compares what was committed with the projection log, the inbox and
// the read model (read through the HTTP API), and fills in the counts and
// latencies of res.
func check(ctx context.Context, db *gorm.DB, c *client, cfg Config, events map[string]committed, want map[string]expectation, res *Result) []string {
	var fails []string
	add := func(kind string, n *int, format string, args ...any) {
		*n++
		if *n <= 5 {
			fails = append(fails, fmt.Sprintf(format, args...))
		} else if *n == 6 {
			fails = append(fails, fmt.Sprintf("(more %s not listed)", kind))
		}
	}

	// Every committed event is in the projection log exactly once, and
	// nothing else is.
	var rows []readmodel.ProjectedEvent
	if err := db.WithContext(ctx).Where("order_id LIKE ?", cfg.Prefix+"%").Find(&rows).Error; err != nil {
		return append(fails, fmt.Sprintf("read projected_events: %v", err))
	}
	res.Projected = len(rows)
	seen := make(map[string]int, len(rows))
	perOrder := map[string]int{}
	lat := make([]time.Duration, 0, len(rows))
	var nMissing, nDup, nExtra, nState, nInbox int
	for _, r := range rows {
		seen[r.MessageUUID]++
		if seen[r.MessageUUID] > 1 {
			add("duplicates", &nDup, "event %s (%s of order %s) was applied %d times", r.MessageUUID, r.Event, r.OrderID, seen[r.MessageUUID])
			continue
		}
		ev, ok := events[r.MessageUUID]
		if !ok {
			add("unexpected events", &nExtra, "event %s (%s of order %s) was projected but never committed", r.MessageUUID, r.Event, r.OrderID)
			continue
		}
		perOrder[r.OrderID]++
		lat = append(lat, max(0, time.Unix(0, r.ProjectedAt).Sub(ev.at)))
	}
	for id, ev := range events {
		if seen[id] == 0 {
			add("missing events", &nMissing, "event %s of order %s was committed but never projected", id, ev.orderID)
		}
	}
	res.P50, res.P99, res.Max = percentile(lat, 50), percentile(lat, 99), percentile(lat, 100)

	// The inbox recorded every committed event for the projection.
	ids := make([]string, 0, len(events))
	for id := range events {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	inInbox := map[string]bool{}
	for chunk := range slices.Chunk(ids, 500) {
		var got []string
		if err := db.WithContext(ctx).Table(inbox.DefaultTable).Where("consumer = ? AND message_uuid IN ?", readmodel.Consumer, chunk).
			Pluck("message_uuid", &got).Error; err != nil {
			return append(fails, fmt.Sprintf("read the inbox: %v", err))
		}
		for _, id := range got {
			inInbox[id] = true
		}
	}
	res.InboxRows = len(inInbox)
	for _, id := range ids {
		if !inInbox[id] {
			add("inbox misses", &nInbox, "event %s of order %s is not in the inbox of %s", id, events[id].orderID, readmodel.Consumer)
		}
	}

	// Every order is in its expected state in the read model, read through
	// the API as a client would.
	committedPerOrder := map[string]int{}
	for _, ev := range events {
		committedPerOrder[ev.orderID]++
	}
	views := make(chan string)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Go(func() {
			for id := range views {
				var v readmodel.OrderView
				status, text, err := c.do(ctx, "GET", "/orders/"+id, nil, &v)
				w := want[id]
				var msg string
				switch {
				case err != nil:
					msg = fmt.Sprintf("GET /orders/%s: %v", id, err)
				case status != http.StatusOK:
					msg = fmt.Sprintf("GET /orders/%s: %d %s", id, status, strings.TrimSpace(text))
				case v.Status != w.status || v.Version != w.events:
					msg = fmt.Sprintf("order %s in the read model: status %s version %d, want status %s version %d", id, v.Status, v.Version, w.status, w.events)
				case committedPerOrder[id] != w.events || perOrder[id] != w.events:
					msg = fmt.Sprintf("order %s: %d events committed, %d projected, want %d", id, committedPerOrder[id], perOrder[id], w.events)
				}
				if msg != "" {
					mu.Lock()
					add("wrong states", &nState, "%s", msg)
					mu.Unlock()
				}
			}
		})
	}
	for id := range want {
		views <- id
	}
	close(views)
	wg.Wait()
	return fails
}

// percentile returns the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s) + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}
