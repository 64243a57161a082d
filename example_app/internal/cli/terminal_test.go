package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The demo's progress comes every second on a terminal, every 5 seconds
// into a buffer, a pipe or a file.
func TestProgressInterval(t *testing.T) {
	t.Parallel()
	require.Equal(t, 5*time.Second, progressInterval(&bytes.Buffer{}))
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	require.NoError(t, err)
	defer f.Close()
	require.False(t, isTerminal(f))
	require.Equal(t, 5*time.Second, progressInterval(f))
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	require.False(t, isTerminal(w))
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		defer tty.Close()
		require.True(t, isTerminal(tty))
		require.Equal(t, time.Second, progressInterval(tty))
	}
}
