// Package httpapi is the JSON HTTP API of the example service, on Go 1.22
// ServeMux patterns:
//
//	POST /orders              {"customer":"ada","amount_cents":1250[,"id":"o-1"]} -> 201 {"id","status"}
//	POST /orders/{id}/pay                                                      -> 200 {"id","status"}
//	POST /orders/{id}/cancel  [{"reason":"..."}]                               -> 200 {"id","status"}
//	GET  /orders/{id}         the read model                                   -> 200 OrderView
//	GET  /healthz             outbox pending / failed / oldest pending age     -> 200
//
// The POST endpoints dispatch commands on the bus; they answer with the
// write model's state once the command's transaction (with its events in
// the outbox) has committed. GET reads the read model, which the consumer
// fills from the broker: right after a POST it may still answer 404 or the
// previous status. Errors are {"error": "..."} with 400 (bad input), 404
// (unknown order), 409 (business rule: already paid, cancelled, ...), or
// 500.
package httpapi
