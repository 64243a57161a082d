// Command txoutbox administers the outbox and inbox tables of txoutbox:
// migrate, status, failed (list, show, retry, discard), inbox failed (the
// same for the messages consumers parked), purge and version. Run
// "txoutbox --help", or see docs/operations.md ("Admin CLI").
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/txoutbox/txoutbox/cmd/txoutbox/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
