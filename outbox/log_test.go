package outbox_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
)

// syncBuffer is a bytes.Buffer safe for the forwarder's goroutine and the
// test's.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestForwarderLogsBatchesAtDebug: at debug level every batch is one log
// record with what it claimed, published, failed and parked and how long
// it took; at info level there is none.
func TestForwarderLogsBatchesAtDebug(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.SQLite)
	for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo} {
		st := newStore(t, db, gormstore.Config{})
		fill(t, db, st, "orders", 5, 1)
		var buf syncBuffer
		log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: level}))
		pub := newRecordingPublisher()
		f, err := outbox.NewForwarder(st, pub, outbox.ForwarderConfig{Logger: log})
		require.NoError(t, err)
		stop := runForwarder(t, f)
		pub.waitUnique(t, 5, 10*time.Second)
		require.Eventually(t, func() bool { return pending(t, db, "") == 0 }, 10*time.Second, 10*time.Millisecond)
		stop()

		var batches []map[string]any
		for line := range strings.Lines(buf.String()) {
			var rec map[string]any
			require.NoError(t, json.Unmarshal([]byte(line), &rec))
			if rec["msg"] == "outbox relay: batch" {
				batches = append(batches, rec)
			}
		}
		if level == slog.LevelInfo {
			require.Empty(t, batches)
			continue
		}
		require.Len(t, batches, 1, buf.String())
		b := batches[0]
		require.EqualValues(t, 5, b["claimed"])
		require.EqualValues(t, 5, b["published"])
		require.EqualValues(t, 0, b["failed"])
		require.EqualValues(t, 0, b["parked"])
		require.Contains(t, b, "duration")
		require.Equal(t, "txoutbox.forwarder", b["component"])
	}
}
