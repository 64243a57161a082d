package httpapi_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers"
	"github.com/txoutbox/txoutbox/example_app/internal/app"
	"github.com/txoutbox/txoutbox/example_app/internal/httpapi"
	"github.com/txoutbox/txoutbox/example_app/internal/readmodel"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"gorm.io/gorm"
)

// serve runs the whole app (GoChannel broker) on db and returns its URL.
func serve(t *testing.T, db *gorm.DB) string {
	t.Helper()
	b, err := brokers.Open(t.Context(), "", brokers.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := app.New(t.Context(), app.Config{DB: db, Broker: b, Logger: log})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return "http://" + ln.Addr().String()
}

type answer struct {
	status int
	body   map[string]any
	header http.Header
}

func call(t *testing.T, method, url, body string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, rd)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	a := answer{status: resp.StatusCode, header: resp.Header}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		require.NoError(t, json.Unmarshal(raw, &a.body), "%s", raw)
	}
	return a
}

// eventually waits for GET url to answer 200 with the wanted status.
func eventually(t *testing.T, url, status string) map[string]any {
	t.Helper()
	var last answer
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		last = call(t, "GET", url, "")
		if last.status == http.StatusOK && last.body["status"] == status {
			return last.body
		}
	}
	t.Fatalf("GET %s: still %d %v, want status %s", url, last.status, last.body, status)
	return nil
}

func TestAPI(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		base := serve(t, db)

		// Place, with a chosen ID and with a generated one.
		a := call(t, "POST", base+"/orders", `{"id":"o-1","customer":"ada","amount_cents":1250}`)
		require.Equal(t, http.StatusCreated, a.status, a.body)
		require.Equal(t, map[string]any{"id": "o-1", "status": "placed"}, a.body)
		require.Equal(t, "/orders/o-1", a.header.Get("Location"))
		a = call(t, "POST", base+"/orders", `{"customer":"bob","amount_cents":99}`)
		require.Equal(t, http.StatusCreated, a.status, a.body)
		generated := a.body["id"].(string)
		require.Len(t, generated, 36, "a UUID")

		// The read model follows.
		v := eventually(t, base+"/orders/o-1", "placed")
		require.Equal(t, "ada", v["customer"])
		require.EqualValues(t, 1250, v["amount_cents"])
		require.EqualValues(t, 1, v["version"])
		eventually(t, base+"/orders/"+generated, "placed")

		// Pay, then what the rules forbid.
		a = call(t, "POST", base+"/orders/o-1/pay", "")
		require.Equal(t, http.StatusOK, a.status, a.body)
		require.Equal(t, "paid", a.body["status"])
		v = eventually(t, base+"/orders/o-1", "paid")
		require.EqualValues(t, 2, v["version"])
		require.NotEmpty(t, v["paid_at"])

		a = call(t, "POST", base+"/orders/"+generated+"/cancel", `{"reason":"changed my mind"}`)
		require.Equal(t, http.StatusOK, a.status, a.body)
		v = eventually(t, base+"/orders/"+generated, "cancelled")
		require.Equal(t, "changed my mind", v["cancel_reason"])

		for _, tc := range []struct {
			method, path, body string
			status             int
			err                string
		}{
			{"POST", "/orders/o-1/pay", "", http.StatusConflict, "already paid"},
			{"POST", "/orders/o-1/cancel", "", http.StatusConflict, "paid and cannot be cancelled"},
			{"POST", "/orders/" + generated + "/pay", "", http.StatusConflict, "cancelled"},
			{"POST", "/orders/" + generated + "/cancel", "", http.StatusConflict, "cancelled"},
			{"POST", "/orders", `{"id":"o-1","customer":"eve","amount_cents":1}`, http.StatusConflict, "already exists"},
			{"POST", "/orders/nope/pay", "", http.StatusNotFound, "not found"},
			{"POST", "/orders/nope/cancel", "", http.StatusNotFound, "not found"},
			{"GET", "/orders/nope", "", http.StatusNotFound, "not in the read model"},
			{"POST", "/orders", `{"customer":"ada"}`, http.StatusBadRequest, "amount_cents must be positive"},
			{"POST", "/orders", `{"amount_cents":5}`, http.StatusBadRequest, "missing customer"},
			{"POST", "/orders", `{"id":"a b","customer":"x","amount_cents":5}`, http.StatusBadRequest, "only letters"},
			{"POST", "/orders", ``, http.StatusBadRequest, "empty body"},
			{"POST", "/orders", `{"customer":`, http.StatusBadRequest, "bad request body"},
			{"POST", "/orders", `{"customer":"x","amount_cents":5,"extra":1}`, http.StatusBadRequest, "unknown field"},
			{"POST", "/orders", `{"customer":"x","amount_cents":5}{}`, http.StatusBadRequest, "more than one"},
			{"POST", "/orders/o-1/cancel", `{"why":"x"}`, http.StatusBadRequest, "unknown field"},
		} {
			a := call(t, tc.method, base+tc.path, tc.body)
			require.Equal(t, tc.status, a.status, "%s %s %s: %v", tc.method, tc.path, tc.body, a.body)
			require.Contains(t, a.body["error"], tc.err, "%s %s", tc.method, tc.path)
			require.Equal(t, "application/json", a.header.Get("Content-Type"))
		}

		// Health: the outbox has been drained.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			a = call(t, "GET", base+"/healthz", "")
			require.Equal(t, http.StatusOK, a.status)
			if a.body["outbox_pending"] == float64(0) || time.Now().After(deadline) {
				break
			}
		}
		require.Equal(t, map[string]any{"status": "ok", "broker": "ok", "consumer": "ok", "consumer_failed": 0.0, "outbox_pending": 0.0, "outbox_failed": 0.0, "oldest_pending_seconds": 0.0}, a.body)
		require.EqualValues(t, 4, testdb.Count(t, db, "projected_events", ""))
		require.EqualValues(t, 4, testdb.Count(t, db, "txoutbox_inbox", "consumer = ?", readmodel.Consumer))
	})
}

// Bad input answers 400 (413 for a body too large) with the API's error
// shape and a message in the API's terms, and changes nothing, on both
// databases: PostgreSQL refuses a NUL byte in text, which used to surface
// as a 500.
func TestBadInput(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		base := serve(t, db)
		a := call(t, "POST", base+"/orders", `{"id":"o-1","customer":"ada","amount_cents":1250}`)
		require.Equal(t, http.StatusCreated, a.status, a.body)
		eventually(t, base+"/orders/o-1", "placed")

		big := `{"customer":"` + strings.Repeat("x", 70<<10) + `","amount_cents":5}`
		for _, tc := range []struct {
			name, method, path, body string
			status                   int
			err                      string
		}{
			{"NUL in customer", "POST", "/orders", `{"customer":"a\u0000b","amount_cents":5}`, 400,
				"invalid command: customer contains the control character U+0000 at byte 1"},
			{"control character in customer", "POST", "/orders", `{"customer":"a\nb","amount_cents":5}`, 400,
				"invalid command: customer contains the control character U+000A at byte 1"},
			{"whitespace-only customer", "POST", "/orders", `{"customer":" \t ","amount_cents":5}`, 400,
				"invalid command: missing customer"},
			{"customer too long", "POST", "/orders", `{"customer":"` + strings.Repeat("é", 201) + `","amount_cents":5}`, 400,
				"invalid command: customer longer than 200 characters"},
			{"NUL in id", "POST", "/orders", `{"id":"a\u0000b","customer":"x","amount_cents":5}`, 400,
				`invalid command: order ID "a\x00b": only letters, digits, '-', '_' and '.' are allowed`},
			{"whitespace-only id", "POST", "/orders", `{"id":"  ","customer":"x","amount_cents":5}`, 400,
				`invalid command: order ID "  ": only letters, digits, '-', '_' and '.' are allowed`},
			{"negative amount", "POST", "/orders", `{"customer":"x","amount_cents":-5}`, 400,
				"invalid command: amount_cents must be positive, got -5"},
			{"amount as a string", "POST", "/orders", `{"customer":"x","amount_cents":"5"}`, 400,
				"bad request body: amount_cents must be an integer, got a string"},
			{"fractional amount", "POST", "/orders", `{"customer":"x","amount_cents":1.5}`, 400,
				"bad request body: amount_cents must be an integer, got 1.5"},
			{"amount out of range", "POST", "/orders", `{"customer":"x","amount_cents":9223372036854775808}`, 400,
				"bad request body: amount_cents must be an integer between -9223372036854775808 and 9223372036854775807, got 9223372036854775808"},
			{"customer as a number", "POST", "/orders", `{"customer":7,"amount_cents":5}`, 400,
				"bad request body: customer must be a string, got a number"},
			{"customer as an object", "POST", "/orders", `{"customer":{},"amount_cents":5}`, 400,
				"bad request body: customer must be a string, got an object"},
			{"body not an object", "POST", "/orders", `[1]`, 400,
				"bad request body: the body must be a JSON object, got an array"},
			{"unknown field", "POST", "/orders", `{"customer":"x","amount_cents":5,"extra":1}`, 400,
				`bad request body: unknown field "extra"`},
			{"field name in capitals", "POST", "/orders", `{"CUSTOMER":"x","amount_cents":5}`, 400,
				`bad request body: unknown field "CUSTOMER" (field names are case-sensitive: "customer")`},
			{"field given twice", "POST", "/orders", `{"customer":"x","amount_cents":5,"customer":"y"}`, 400,
				`bad request body: field "customer" given twice`},
			{"cancel field name in capitals", "POST", "/orders/o-1/cancel", `{"Reason":"x"}`, 400,
				`bad request body: unknown field "Reason" (field names are case-sensitive: "reason")`},
			{"second value", "POST", "/orders", `{"customer":"x","amount_cents":5}{}`, 400,
				"bad request body: more than one JSON value, or data after the JSON object"},
			{"trailing brace", "POST", "/orders", `{"customer":"x","amount_cents":5}}`, 400,
				"bad request body: more than one JSON value, or data after the JSON object"},
			{"trailing garbage", "POST", "/orders", `{"customer":"x","amount_cents":5} x`, 400,
				"bad request body: more than one JSON value, or data after the JSON object"},
			{"truncated", "POST", "/orders", `{"customer":`, 400, "bad request body: the JSON ends too early"},
			{"not JSON", "POST", "/orders", `customer=x`, 400,
				"bad request body: invalid JSON at byte 1: invalid character 'c' looking for beginning of value"},
			{"empty body", "POST", "/orders", ``, 400, "bad request body: empty body"},
			{"body too large", "POST", "/orders", big, 413, "request body larger than 65536 bytes"},
			{"cancel body too large", "POST", "/orders/o-1/cancel", `{"reason":"` + strings.Repeat("x", 70<<10) + `"}`, 413,
				"request body larger than 65536 bytes"},
			{"NUL in reason", "POST", "/orders/o-1/cancel", `{"reason":"a\u0000"}`, 400,
				"invalid command: reason contains the control character U+0000 at byte 1"},
			{"reason too long", "POST", "/orders/o-1/cancel", `{"reason":"` + strings.Repeat("x", 1001) + `"}`, 400,
				"invalid command: reason longer than 1000 characters"},
			{"reason as a number", "POST", "/orders/o-1/cancel", `{"reason":1}`, 400,
				"bad request body: reason must be a string, got a number"},
			{"NUL in a path ID", "GET", "/orders/a%00b", "", 400,
				`invalid command: order ID "a\x00b": only letters, digits, '-', '_' and '.' are allowed`},
			{"space in a path ID", "POST", "/orders/%20/pay", "", 400,
				`invalid command: order ID " ": only letters, digits, '-', '_' and '.' are allowed`},
			{"NUL in a path ID to cancel", "POST", "/orders/a%00/cancel", "", 400,
				`invalid command: order ID "a\x00": only letters, digits, '-', '_' and '.' are allowed`},
		} {
			a := call(t, tc.method, base+tc.path, tc.body)
			require.Equal(t, tc.status, a.status, "%s: %v", tc.name, a.body)
			require.Equal(t, "application/json", a.header.Get("Content-Type"), tc.name)
			require.Equal(t, map[string]any{"error": tc.err}, a.body, tc.name)
			require.NotContains(t, a.body["error"], "Go ", tc.name)
			require.NotContains(t, a.body["error"], "int64", tc.name)
		}
		// A reason may span lines.
		a = call(t, "POST", base+"/orders/o-1/cancel", `{"reason":"too slow,\nand too dear"}`)
		require.Equal(t, http.StatusOK, a.status, a.body)
		v := eventually(t, base+"/orders/o-1", "cancelled")
		require.Equal(t, "too slow,\nand too dear", v["cancel_reason"])
		require.EqualValues(t, 1, testdb.Count(t, db, "orders", ""), "no bad request placed an order")
	})
}

// Unknown routes answer 404 and known paths with another method 405 with
// an Allow header, both in the API's error shape.
func TestRouting(t *testing.T) {
	t.Parallel()
	base := serve(t, testdb.OpenSQLite(t))
	for _, tc := range []struct {
		method, path string
		status       int
		allow, err   string
	}{
		{"GET", "/orders", 405, "POST", "method GET not allowed on /orders (allowed: POST)"},
		{"DELETE", "/orders/o-1", 405, "GET, HEAD", "method DELETE not allowed on /orders/o-1 (allowed: GET, HEAD)"},
		{"GET", "/orders/o-1/pay", 405, "POST", "method GET not allowed on /orders/o-1/pay (allowed: POST)"},
		{"PUT", "/healthz", 405, "GET, HEAD", "method PUT not allowed on /healthz (allowed: GET, HEAD)"},
		{"POST", "/orders/o-1/ship", 404, "", "no route POST /orders/o-1/ship"},
		{"GET", "/", 404, "", "no route GET /"},
		{"GET", "/nope", 404, "", "no route GET /nope"},
		{"GET", "/orders/", 404, "", "no route GET /orders/"},
	} {
		a := call(t, tc.method, base+tc.path, "")
		require.Equal(t, tc.status, a.status, "%s %s: %v", tc.method, tc.path, a.body)
		require.Equal(t, "application/json", a.header.Get("Content-Type"), "%s %s", tc.method, tc.path)
		require.Equal(t, tc.allow, a.header.Get("Allow"), "%s %s", tc.method, tc.path)
		require.Equal(t, map[string]any{"error": tc.err}, a.body, "%s %s", tc.method, tc.path)
	}
}

func TestNewNeedsBusAndDB(t *testing.T) {
	t.Parallel()
	_, err := httpapi.New(httpapi.Config{})
	require.Error(t, err)
}
