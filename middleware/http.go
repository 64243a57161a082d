package middleware

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"

	"github.com/txoutbox/txoutbox/outbox"
)

// HTTPConfig configures [Transactional.HTTP]. The zero value is valid.
type HTTPConfig struct {
	// CommandName names a request's command for event metadata
	// (outbox.MetadataCommand). Optional; default the ServeMux pattern
	// that matched the request (r.Pattern, as "POST /orders/{id}") when
	// set, else the method and path ("POST /orders/42").
	CommandName func(r *http.Request) string
	// Commit reports whether a response status commits the request's
	// transaction. Optional; default: 2xx statuses commit, every other
	// status rolls back. Accept 303 here for the Post/Redirect/Get pattern.
	Commit func(status int) bool
	// CorrelationIDHeader names a request header whose value becomes the
	// correlation ID of the request's events (outbox.WithCorrelationID),
	// for example "X-Request-ID". Optional; default none: each request
	// starts a new correlation.
	CorrelationIDHeader string
	// OnError writes the response when the transaction fails although the
	// handler's status would commit: the commit itself failed, or saving
	// the events did (an Emit, marshaling or insert error). The handler's
	// buffered response is discarded; err is the transaction's error.
	// Optional; default: log err with slog.Default and reply 500 Internal
	// Server Error.
	OnError func(w http.ResponseWriter, r *http.Request, err error)
}

// HTTP returns net/http middleware that runs each request as one command
// under t: the handler gets a request whose context carries a transaction
// (outbox.Tx) and an event collector (outbox.Emit), and the events are
// saved to the outbox only if the handler's status commits (2xx by
// default, see HTTPConfig.Commit) and the transaction then commits.
//
// The response is buffered, headers and body, until the transaction ends,
// so a client never sees a success whose transaction failed: a failed
// commit turns the handler's 2xx into HTTPConfig.OnError's response (500
// by default). A status that does not commit rolls the transaction back
// and the handler's own response is sent unchanged. The buffering costs
// memory for large responses, and streaming (http.Flusher, Hijack, server
// sent events) is not available inside the transaction.
//
// When a serialization failure or deadlock is retried (see
// TransactionalConfig.MaxRetries), the handler runs again with a fresh
// response buffer and a request body that replays, from the start, what
// the failed attempt read: that part of the body is kept in memory. With
// retries disabled (MaxRetries < 0) the body is passed through as is.
//
// A panic in the handler rolls the transaction back and propagates, as
// net/http expects; nothing of the buffered response has been sent.
func (t *Transactional) HTTP(cfg HTTPConfig) func(http.Handler) http.Handler {
	name := cfg.CommandName
	if name == nil {
		name = defaultHTTPCommandName
	}
	commit := cfg.Commit
	if commit == nil {
		commit = func(status int) bool { return status >= 200 && status < 300 }
	}
	onError := cfg.OnError
	if onError == nil {
		onError = defaultHTTPOnError
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx := r.Context()
			if h := cfg.CorrelationIDHeader; h != "" {
				if id := r.Header.Get(h); id != "" {
					ctx = outbox.WithCorrelationID(ctx, id)
				}
			}
			var body *replayBody
			if t.cfg.MaxRetries > 0 && r.Body != nil && r.Body != http.NoBody {
				body = &replayBody{src: r.Body}
			}
			var resp *bufferedResponse
			err := t.Run(ctx, name(r), func(ctx context.Context) error {
				resp = &bufferedResponse{header: w.Header().Clone()}
				req := r.WithContext(ctx)
				if body != nil {
					req.Body = &replayReader{b: body}
				}
				next.ServeHTTP(resp, req)
				if status := resp.statusCode(); !commit(status) {
					return &rollbackStatus{status: status}
				}
				return nil
			})
			var rb *rollbackStatus
			if err == nil || errors.As(err, &rb) {
				resp.writeTo(w)
				return
			}
			onError(w, r, err)
		})
	}
}

func defaultHTTPCommandName(r *http.Request) string {
	if r.Pattern != "" {
		return r.Pattern
	}
	return r.Method + " " + r.URL.Path
}

func defaultHTTPOnError(w http.ResponseWriter, r *http.Request, err error) {
	slog.ErrorContext(r.Context(), "txoutbox: request transaction failed; replying 500",
		"method", r.Method, "path", r.URL.Path, "error", err)
	http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
}

// rollbackStatus is the error that rolls back a request whose handler
// replied with a status that does not commit.
type rollbackStatus struct{ status int }

func (e *rollbackStatus) Error() string {
	return fmt.Sprintf("middleware: status %d rolls the request's transaction back", e.status)
}

// bufferedResponse is an http.ResponseWriter that keeps the response in
// memory until the transaction has ended.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(status int) {
	if b.status == 0 {
		b.status = status
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	return b.body.Write(p)
}

func (b *bufferedResponse) statusCode() int {
	if b.status == 0 {
		return http.StatusOK
	}
	return b.status
}

// writeTo sends the buffered response: its headers replace w's.
func (b *bufferedResponse) writeTo(w http.ResponseWriter) {
	h := w.Header()
	clear(h)
	maps.Copy(h, b.header)
	w.WriteHeader(b.statusCode())
	_, _ = w.Write(b.body.Bytes())
}

// replayBody is a request body that every attempt of a retried request
// reads from the start: what earlier attempts read is kept.
type replayBody struct {
	src  io.Reader
	read bytes.Buffer
	err  error // the error src returned, once it returned one
}

// replayReader reads a replayBody from the start.
type replayReader struct {
	b   *replayBody
	pos int
}

func (r *replayReader) Read(p []byte) (int, error) {
	b := r.b
	if r.pos < b.read.Len() {
		n := copy(p, b.read.Bytes()[r.pos:])
		r.pos += n
		return n, nil
	}
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.src.Read(p)
	b.read.Write(p[:n])
	r.pos += n
	if err != nil {
		b.err = err
	}
	return n, err
}

// Close does nothing: the server closes the request's body.
func (r *replayReader) Close() error { return nil }
