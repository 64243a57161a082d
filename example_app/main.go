package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/txoutbox/txoutbox/example_app/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr, cli.Getenv)
	stop()
	os.Exit(code)
}
