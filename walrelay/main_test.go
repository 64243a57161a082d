package walrelay_test

import (
	"testing"

	"github.com/txoutbox/txoutbox/internal/leak"
)

// TestMain fails the package's tests when a goroutine they started is
// still running after them.
func TestMain(m *testing.M) {
	leak.VerifyTestMain(m)
}
