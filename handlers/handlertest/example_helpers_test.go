package handlertest_test

import (
	"context"
	"fmt"
	"testing"
)

// exampleT stands in for a test's *testing.T in the runnable examples,
// which have none. It prints failures and panics on Fatalf, and runs its
// cleanups in finish, as a test does when it ends.
type exampleT struct {
	testing.TB // nil: only the methods below are used
	cleanups   []func()
}

func newExampleT() *exampleT { return &exampleT{} }

func (t *exampleT) Helper()                           {}
func (t *exampleT) Context() context.Context          { return context.Background() }
func (t *exampleT) Cleanup(f func())                  { t.cleanups = append(t.cleanups, f) }
func (t *exampleT) Errorf(format string, args ...any) { fmt.Printf("FAIL: "+format+"\n", args...) }
func (t *exampleT) FailNow()                          { panic("example failed") }
func (t *exampleT) Fatalf(format string, args ...any) {
	t.Errorf(format, args...)
	t.FailNow()
}

// finish runs the cleanups, last registered first.
func (t *exampleT) finish() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}
