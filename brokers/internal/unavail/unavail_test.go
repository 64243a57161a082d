package unavail_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/internal/unavail"
	"github.com/txoutbox/txoutbox/outbox"
)

func TestIfNetwork(t *testing.T) {
	t.Parallel()
	require.NoError(t, unavail.IfNetwork(nil))
	_, dialErr := net.Dial("tcp", "127.0.0.1:1")
	require.Error(t, dialErr)
	for _, err := range []error{dialErr, fmt.Errorf("read: %w", io.EOF), fmt.Errorf("x: %w", net.ErrClosed)} {
		marked := unavail.IfNetwork(err)
		require.ErrorIs(t, marked, outbox.ErrPublisherUnavailable, "%v", err)
		require.Equal(t, err.Error(), marked.Error())
	}
	other := errors.New("message too large")
	require.Same(t, other, unavail.IfNetwork(other))
	require.ErrorIs(t, unavail.Mark(other), outbox.ErrPublisherUnavailable)
}
