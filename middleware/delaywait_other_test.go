//go:build !linux

package middleware_test

import "time"

// lockPreciseWait does nothing on this platform.
func lockPreciseWait() {}

// sleepUntil returns at t, or later: time.Sleep may round a sub-millisecond
// wait up to the runtime poller's millisecond.
func sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }
