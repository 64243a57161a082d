//go:build !unix

package middleware_test

import (
	"testing"
	"time"
)

// processCPU is not measured on this platform: go-cpu-ns/op reads 0.
func processCPU(*testing.B) time.Duration { return 0 }
