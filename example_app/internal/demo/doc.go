// Package demo drives the example service the way clients would and checks
// the outcome end to end: `example_app demo -n N` places N orders through
// the HTTP API, pays or cancels each, tries what the business rules forbid
// (paying twice, paying a cancelled order, cancelling a paid one, unknown
// orders), waits until the read model has caught up, and then checks, for
// the run's orders only:
//
//   - every event the outbox committed (recorded by an AfterCommit hook) is
//     in the projection log exactly once, and no other event is;
//   - the inbox holds a row for every committed event;
//   - every order in the read model (read through GET /orders/{id}) has the
//     expected status and version;
//   - no event of the run's topic is pending or parked in the outbox;
//   - every HTTP answer was the expected one.
//
// It reports commands, events committed, published and projected, and the
// commit-to-projection latency (p50, p99, max): from the AfterCommit hook
// to the projection's transaction. The latency includes queueing: the
// clients commit in parallel while one consumer projects the events in
// order, one transaction each, so under the demo's load events wait behind
// each other; it is not the latency of an idle system. The summary says so
// in one line under the figures.
//
// While it runs it writes a progress line (Config.Progress; the command
// sends it to stderr, every second on a terminal, every 5 seconds
// otherwise): the phase (commands, catch-up, checks), orders placed, paid
// and cancelled, and events committed, published and consumed. Published
// counts the messages of publish calls that returned, so with the
// in-process GoChannel, which delivers inside the call, it can trail
// consumed.
package demo
