package httpapi

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strings"

	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/example_app/internal/orders"
	"github.com/txoutbox/txoutbox/example_app/internal/readmodel"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// maxBody bounds request bodies.
const maxBody = 64 << 10

// Config configures the API handler.
type Config struct {
	// Bus dispatches the commands. Required.
	Bus *bus.Bus
	// DB is the database the read model is read from. Required.
	DB *gorm.DB
	// Stats reports the outbox for GET /healthz. Optional.
	Stats func(ctx context.Context) (outbox.Stats, error)
	// Broker reports whether the broker answers, for GET /healthz
	// (brokers.Broker.Health). Optional.
	Broker func(ctx context.Context) error
	// Consumer reports the read-model consumer for GET /healthz
	// (inbox.Consumer.Health): an error makes the status "degraded".
	// Optional.
	Consumer func() error
	// ConsumerFailed counts the consumer's messages in the inbox's failed
	// table, for GET /healthz. Optional.
	ConsumerFailed func(ctx context.Context) (int64, error)
	// Metrics serves GET /metrics. Optional.
	Metrics http.Handler
	// Logger receives the errors answered with 500. Optional; default
	// slog.Default().
	Logger *slog.Logger
}

// New returns the HTTP handler of the orders API.
func New(cfg Config) (http.Handler, error) {
	if cfg.Bus == nil || cfg.DB == nil {
		return nil, errors.New("httpapi: Config.Bus and Config.DB are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	mux := http.NewServeMux()
	a := &api{cfg: cfg, mux: mux}
	mux.HandleFunc("POST /orders", a.place)
	mux.HandleFunc("POST /orders/{id}/pay", a.pay)
	mux.HandleFunc("POST /orders/{id}/cancel", a.cancel)
	mux.HandleFunc("GET /orders/{id}", a.get)
	mux.HandleFunc("GET /healthz", a.health)
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", cfg.Metrics)
	}
	// Every request no route above takes: 404 or 405 in the API's error
	// shape, instead of ServeMux's plain text.
	mux.HandleFunc("/", a.noRoute)
	return mux, nil
}

type api struct {
	cfg Config
	mux *http.ServeMux
}

// methods are the methods noRoute tries for the Allow header of a 405.
var methods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions}

// noRoute answers a request that matches no route: 405 with an Allow header
// when the path has routes for other methods, 404 otherwise.
func (a *api) noRoute(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range methods {
		probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
		if _, pattern := a.mux.Handler(probe); pattern != "" && pattern != "/" {
			allow = append(allow, m)
		}
	}
	if len(allow) == 0 {
		writeJSON(w, http.StatusNotFound, ErrorResponse{Error: fmt.Sprintf("no route %s %s", r.Method, r.URL.Path)})
		return
	}
	w.Header().Set("Allow", strings.Join(allow, ", "))
	writeJSON(w, http.StatusMethodNotAllowed, ErrorResponse{Error: fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allow, ", "))})
}

// PlaceRequest is the body of POST /orders.
type PlaceRequest struct {
	// ID is the new order's ID. Optional: a UUIDv7 is generated when it is
	// empty. Sending the same ID again fails with 409, so a client that
	// retries a request cannot place an order twice.
	ID string `json:"id,omitempty"`
	// Customer places the order. Required.
	Customer string `json:"customer"`
	// AmountCents is the total in cents. Required, positive.
	AmountCents int64 `json:"amount_cents"`
}

// CancelRequest is the optional body of POST /orders/{id}/cancel.
type CancelRequest struct {
	// Reason says why the order is cancelled. Optional.
	Reason string `json:"reason,omitempty"`
}

// CommandResponse answers an accepted command: the write model's state
// after it. The read model (GET /orders/{id}) follows once the events are
// projected.
type CommandResponse struct {
	// ID is the order's ID.
	ID string `json:"id"`
	// Status is the order's status after the command.
	Status orders.Status `json:"status"`
}

// ErrorResponse is the body of every error answer.
type ErrorResponse struct {
	// Error says what went wrong.
	Error string `json:"error"`
}

func (a *api) place(w http.ResponseWriter, r *http.Request) {
	var req PlaceRequest
	if !decode(w, r, &req, false) {
		return
	}
	id := req.ID
	if id == "" {
		id = outbox.NewUUID()
	}
	err := a.cfg.Bus.Dispatch(r.Context(), orders.PlaceOrder{OrderID: id, Customer: req.Customer, AmountCents: req.AmountCents})
	if a.fail(w, r, err) {
		return
	}
	w.Header().Set("Location", "/orders/"+id)
	writeJSON(w, http.StatusCreated, CommandResponse{ID: id, Status: orders.StatusPlaced})
}

func (a *api) pay(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if a.fail(w, r, a.cfg.Bus.Dispatch(r.Context(), orders.PayOrder{OrderID: id})) {
		return
	}
	writeJSON(w, http.StatusOK, CommandResponse{ID: id, Status: orders.StatusPaid})
}

func (a *api) cancel(w http.ResponseWriter, r *http.Request) {
	var req CancelRequest
	if !decode(w, r, &req, true) {
		return
	}
	id := r.PathValue("id")
	if a.fail(w, r, a.cfg.Bus.Dispatch(r.Context(), orders.CancelOrder{OrderID: id, Reason: req.Reason})) {
		return
	}
	writeJSON(w, http.StatusOK, CommandResponse{ID: id, Status: orders.StatusCancelled})
}

func (a *api) get(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if a.fail(w, r, orders.ValidateID(id)) {
		return
	}
	v, err := readmodel.Get(r.Context(), a.cfg.DB, id)
	if a.fail(w, r, err) {
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// HealthResponse is the body of GET /healthz.
type HealthResponse struct {
	// Status is "ok", or "degraded" while the broker does not answer (the
	// service still takes commands, and their events wait in the outbox)
	// or the consumer makes no progress while messages wait.
	Status string `json:"status"`
	// Broker is "ok", or "down: " and the reason.
	Broker string `json:"broker,omitempty"`
	// Consumer is "ok", or "stalled: " / "not running: " and the reason.
	Consumer string `json:"consumer,omitempty"`
	// ConsumerFailed counts the consumer's messages in the inbox's failed
	// table (parked, or held behind a parked one).
	ConsumerFailed int64 `json:"consumer_failed"`
	// OutboxPending counts events not yet published.
	OutboxPending int64 `json:"outbox_pending"`
	// OutboxFailed counts events parked after too many failed publishes.
	OutboxFailed int64 `json:"outbox_failed"`
	// OldestPendingSeconds is the age of the oldest unpublished event.
	OldestPendingSeconds float64 `json:"oldest_pending_seconds"`
}

func (a *api) health(w http.ResponseWriter, r *http.Request) {
	resp := HealthResponse{Status: "ok"}
	if a.cfg.Stats != nil {
		st, err := a.cfg.Stats(r.Context())
		if a.fail(w, r, err) {
			return
		}
		resp.OutboxPending, resp.OutboxFailed = st.Pending, st.Failed
		resp.OldestPendingSeconds = st.OldestPendingAge.Seconds()
	}
	if a.cfg.Broker != nil {
		resp.Broker = "ok"
		if err := a.cfg.Broker(r.Context()); err != nil {
			resp.Status, resp.Broker = "degraded", "down: "+err.Error()
		}
	}
	if a.cfg.Consumer != nil {
		resp.Consumer = "ok"
		if err := a.cfg.Consumer(); err != nil {
			state := "stalled: "
			if errors.Is(err, inbox.ErrNotRunning) {
				state = "not running: "
			}
			resp.Status, resp.Consumer = "degraded", state+err.Error()
		}
	}
	if a.cfg.ConsumerFailed != nil {
		n, err := a.cfg.ConsumerFailed(r.Context())
		if a.fail(w, r, err) {
			return
		}
		resp.ConsumerFailed = n
	}
	writeJSON(w, http.StatusOK, resp)
}

// fail answers err, if any, and reports whether it did: 400 for invalid
// input, 404 for an unknown order, 409 for a business-rule violation, 503
// when the request was cancelled, 500 otherwise (logged, not shown).
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) bool {
	if err == nil {
		return false
	}
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, orders.ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, orders.ErrNotFound), errors.Is(err, readmodel.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, orders.ErrConflict):
		status = http.StatusConflict
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		status = http.StatusServiceUnavailable
	}
	msg := err.Error()
	if status == http.StatusInternalServerError {
		a.cfg.Logger.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		msg = "internal error"
	}
	writeJSON(w, status, ErrorResponse{Error: msg})
	return true
}

// decode reads a JSON body into v; an empty body is accepted when
// optional. It answers itself and returns false on a bad body: 413 when the
// body is larger than maxBody, 400 otherwise, with a message that names the
// JSON field, not the Go type behind it. Field names are matched exactly
// (encoding/json alone takes "CUSTOMER" for "customer") and once.
func decode(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		writeJSON(w, http.StatusRequestEntityTooLarge, ErrorResponse{Error: fmt.Sprintf("request body larger than %d bytes", mb.Limit)})
		return false
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, ErrorResponse{Error: "bad request body: cannot read it: " + err.Error()})
		return false
	}
	if optional && len(bytes.TrimSpace(body)) == 0 {
		return true
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	err = dec.Decode(v)
	if err == nil {
		// Anything after the JSON value, even a lone '}', is an error.
		if _, terr := dec.Token(); !errors.Is(terr, io.EOF) {
			err = errTrailing
		}
	}
	if err == nil {
		err = exactFields(body, v)
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, ErrorResponse{Error: "bad request body: " + bodyError(err)})
		return false
	}
	return true
}

// fieldError is a field name that is not one of the request's, or given
// twice.
type fieldError struct{ msg string }

func (e fieldError) Error() string { return e.msg }

// exactFields checks the keys of the JSON object body against the JSON
// names of the struct v points to: each must be one of them, spelled
// exactly, and appear once. body has been decoded into v without error.
func exactFields(body []byte, v any) error {
	t := reflect.TypeOf(v).Elem()
	if t.Kind() != reflect.Struct {
		return nil
	}
	names := map[string]bool{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		names[cmp.Or(name, f.Name)] = true
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil // null: nothing to check
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		if !names[key] {
			for name := range names {
				if strings.EqualFold(name, key) {
					return fieldError{fmt.Sprintf("unknown field %q (field names are case-sensitive: %q)", key, name)}
				}
			}
			return fieldError{fmt.Sprintf("unknown field %q", key)}
		}
		if seen[key] {
			return fieldError{fmt.Sprintf("field %q given twice", key)}
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	return nil
}

// errTrailing: the body has more than one JSON value.
var errTrailing = errors.New("more than one JSON value, or data after the JSON object")

// bodyError says what is wrong with a body in the API's terms: JSON field
// names and JSON types, never Go's.
func bodyError(err error) string {
	var (
		syntax *json.SyntaxError
		typ    *json.UnmarshalTypeError
	)
	switch {
	case errors.Is(err, io.EOF):
		return "empty body"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "the JSON ends too early"
	case errors.As(err, &syntax):
		return fmt.Sprintf("invalid JSON at byte %d: %s", syntax.Offset, strings.TrimPrefix(syntax.Error(), "json: "))
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fmt.Sprintf("the body must be a JSON object, got %s", jsonValue(typ.Value))
		}
		want := jsonType(typ.Type)
		if n, ok := strings.CutPrefix(typ.Value, "number "); ok && !strings.ContainsAny(n, ".eE") && strings.HasSuffix(want, "integer") {
			return fmt.Sprintf("%s must be %s between %d and %d, got %s", typ.Field, want, minInt(typ.Type), maxInt(typ.Type), n)
		}
		return fmt.Sprintf("%s must be %s, got %s", typ.Field, want, jsonValue(typ.Value))
	case errors.Is(err, errTrailing):
		return err.Error()
	case errors.As(err, new(fieldError)):
		return err.Error()
	}
	// Unknown fields: `json: unknown field "x"`, with no Go type in it.
	if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return "unknown field " + msg
	}
	return "invalid JSON"
}

// jsonType names the JSON type a Go type decodes from.
func jsonType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "an array"
	}
	return "an object"
}

// minInt and maxInt bound an integer type.
func minInt(t reflect.Type) int64 {
	if t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uint64 {
		return 0
	}
	return -1 << (t.Bits() - 1)
}

func maxInt(t reflect.Type) uint64 {
	if t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uint64 {
		return 1<<t.Bits() - 1
	}
	return 1<<(t.Bits()-1) - 1
}

// jsonValue describes the JSON value UnmarshalTypeError.Value names:
// "string", "number 1.5", "bool", "array", "object".
func jsonValue(v string) string {
	if n, ok := strings.CutPrefix(v, "number "); ok {
		return n
	}
	switch v {
	case "array", "object":
		return "an " + v
	case "bool":
		return "a boolean"
	}
	return "a " + v
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
