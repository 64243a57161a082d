// Package cli is the command line of the example app: flags and
// environment, the serve and demo modes, and exit codes. [Main] is the
// whole program; main only adds the process's arguments, environment and
// signals, so the tests run it as a function.
package cli
