package middleware_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/middleware"
	"github.com/txoutbox/txoutbox/outbox"
)

// ordersHandler decodes a PlaceOrder from the body, writes the order, emits
// OrderPlaced and replies with the status the query asks for (default 201).
func ordersHandler(w http.ResponseWriter, r *http.Request) {
	var cmd PlaceOrder
	if err := json.NewDecoder(r.Body).Decode(&cmd); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx := r.Context()
	if err := insertOrder(ctx, cmd.OrderID, cmd.Amount); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if err := outbox.Emit(ctx, OrderPlaced{OrderID: cmd.OrderID, Amount: cmd.Amount}); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("X-Order", cmd.OrderID)
	if cmd.Amount < 0 {
		http.Error(w, "negative amount", http.StatusUnprocessableEntity)
		return
	}
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, "created "+cmd.OrderID)
}

func orderBody(id string, amount int) io.Reader {
	b, _ := json.Marshal(PlaceOrder{OrderID: id, Amount: amount})
	return strings.NewReader(string(b))
}

// TestHTTP: one transaction per request; a 2xx commits the order and its
// event and the client gets the handler's response; a 4xx rolls both back
// and the client still gets the handler's response.
func TestHTTP(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		f := newFixture(t, d)
		mux := http.NewServeMux()
		mux.Handle("POST /orders", f.tm.HTTP(middleware.HTTPConfig{CorrelationIDHeader: "X-Request-ID"})(http.HandlerFunc(ordersHandler)))
		srv := httptest.NewServer(mux)
		t.Cleanup(srv.Close)

		req, err := http.NewRequest(http.MethodPost, srv.URL+"/orders", orderBody("o-1", 5))
		require.NoError(t, err)
		req.Header.Set("X-Request-ID", "req-1")
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusCreated, resp.StatusCode)
		require.Equal(t, "created o-1", string(body))
		require.Equal(t, "o-1", resp.Header.Get("X-Order"))
		rows := f.outbox(t)
		require.Len(t, rows, 1)
		require.Equal(t, "POST /orders", rows[0].meta(t)[outbox.MetadataCommand], "named after the ServeMux pattern")
		require.Equal(t, "req-1", rows[0].meta(t)[outbox.MetadataCorrelationID])
		require.Equal(t, int64(1), f.orderCount(t, "id = 'o-1'"))

		resp, err = srv.Client().Post(srv.URL+"/orders", "application/json", orderBody("o-2", -1))
		require.NoError(t, err)
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode)
		require.Equal(t, "negative amount\n", string(body))
		require.Equal(t, "o-2", resp.Header.Get("X-Order"), "the handler's response is sent as is")
		require.Zero(t, f.orderCount(t, "id = 'o-2'"))
		require.Equal(t, int64(1), f.outboxCount(t))
	})
}

// TestHTTPCommitFails: a handler replies 201 but the commit fails (a
// deferred constraint): the client gets a 500, never the 201, and nothing
// is saved.
func TestHTTPCommitFails(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.Postgres)
	require.NoError(t, f.db.Exec(`CREATE TABLE reservations (sku TEXT,
		CONSTRAINT reservations_sku_key UNIQUE (sku) DEFERRABLE INITIALLY DEFERRED)`).Error)
	var gotErr error
	h := f.tm.HTTP(middleware.HTTPConfig{OnError: func(w http.ResponseWriter, r *http.Request, err error) {
		gotErr = err
		http.Error(w, "try again", http.StatusInternalServerError)
	}})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tx, err := outbox.Tx(r.Context())
		require.NoError(t, err)
		// Both inserts succeed; the unique check runs at COMMIT.
		require.NoError(t, tx.Exec(`INSERT INTO reservations VALUES ('sku-1'), ('sku-1')`).Error)
		require.NoError(t, outbox.Emit(r.Context(), OrderPlaced{OrderID: "o-1"}))
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "reserved")
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/reserve", nil))
	require.Equal(t, http.StatusInternalServerError, rec.Code)
	require.Equal(t, "try again\n", rec.Body.String())
	require.ErrorContains(t, gotErr, "reservations_sku_key")
	require.Zero(t, f.outboxCount(t))
	require.Zero(t, testdb.Count(t, f.db, "reservations", ""))
}

// TestHTTPEmitFails: an Emit error fails the request even when the
// handler ignores it and replies 200: default OnError, 500.
func TestHTTPEmitFails(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.SQLite)
	h := f.tm.HTTP(middleware.HTTPConfig{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = insertOrder(r.Context(), "o-1", 1)
		_ = outbox.Emit(r.Context(), nil) // error ignored by the handler
		_, _ = io.WriteString(w, "ok")
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/x", nil))
	require.Equal(t, http.StatusInternalServerError, rec.Code)
	require.NotContains(t, rec.Body.String(), "ok")
	f.requireNothingSaved(t)
}

// TestHTTPRetryReplaysBody: a retried request runs the handler again with
// the whole body, though the failed attempt had read part of it, and only
// the last attempt's response is sent.
func TestHTTPRetryReplaysBody(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.Postgres, withConfig(func(c *middleware.TransactionalConfig) {
		c.Retryable = func(err error) bool { return errors.Is(err, outbox.ErrNilEvent) }
	}))
	var attempts atomic.Int32
	var lastBody string
	h := f.tm.HTTP(middleware.HTTPConfig{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if attempts.Add(1) == 1 {
			half := make([]byte, 10)
			_, err := io.ReadFull(r.Body, half)
			require.NoError(t, err)
			_ = outbox.Emit(r.Context(), nil) // fails the attempt with a retryable error
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, "attempt 1")
			return
		}
		b, err := io.ReadAll(r.Body)
		require.NoError(t, err)
		lastBody = string(b)
		require.NoError(t, outbox.Emit(r.Context(), OrderShipped{OrderID: "o-9"}))
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "attempt 2")
	}))
	body := strings.Repeat("0123456789", 100)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/x", strings.NewReader(body)))
	require.Equal(t, int32(2), attempts.Load())
	require.Equal(t, body, lastBody)
	require.Equal(t, http.StatusCreated, rec.Code)
	require.Equal(t, "attempt 2", rec.Body.String())
	require.Equal(t, int64(1), f.outboxCount(t))
}

// TestHTTPCommitStatus: HTTPConfig.Commit decides which statuses commit,
// here a 303 of Post/Redirect/Get; the default rolls a 303 back.
func TestHTTPCommitStatus(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.SQLite)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		require.NoError(t, insertOrder(r.Context(), id, 1))
		require.NoError(t, outbox.Emit(r.Context(), OrderShipped{OrderID: id}))
		http.Redirect(w, r, "/orders/"+id, http.StatusSeeOther)
	})
	prg := f.tm.HTTP(middleware.HTTPConfig{Commit: func(s int) bool { return s < 300 || s == http.StatusSeeOther }})(handler)
	def := f.tm.HTTP(middleware.HTTPConfig{})(handler)

	rec := httptest.NewRecorder()
	def.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/orders?id=a", nil))
	require.Equal(t, http.StatusSeeOther, rec.Code)
	require.Zero(t, f.orderCount(t, ""), "a 303 rolls back by default")

	rec = httptest.NewRecorder()
	prg.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/orders?id=b", nil))
	require.Equal(t, http.StatusSeeOther, rec.Code)
	require.Equal(t, "/orders/b", rec.Header().Get("Location"))
	require.Equal(t, int64(1), f.orderCount(t, "id = 'b'"))
	require.Equal(t, int64(1), f.outboxCount(t))
}

// TestHTTPPanic: a panicking handler rolls back and the panic propagates
// to net/http; nothing was written to the client.
func TestHTTPPanic(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.SQLite)
	h := f.tm.HTTP(middleware.HTTPConfig{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.NoError(t, insertOrder(r.Context(), "o-1", 1))
		_, _ = io.WriteString(w, "partial")
		panic("boom")
	}))
	rec := httptest.NewRecorder()
	require.PanicsWithValue(t, "boom", func() {
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/x", nil))
	})
	require.Empty(t, rec.Body.String())
	f.requireNothingSaved(t)
}

// TestHTTPDefaultName names a request without a ServeMux pattern by its
// method and path.
func TestHTTPDefaultName(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.SQLite)
	h := f.tm.HTTP(middleware.HTTPConfig{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.NoError(t, outbox.Emit(r.Context(), OrderShipped{OrderID: "o"}))
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPut, "/orders/o", nil).WithContext(context.Background()))
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "PUT /orders/o", f.outbox(t)[0].meta(t)[outbox.MetadataCommand])
}
