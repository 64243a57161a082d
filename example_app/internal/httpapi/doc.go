// Package httpapi is the JSON HTTP API of the example service, on Go 1.22
// ServeMux patterns:
//
//	POST /orders              {"customer":"ada","amount_cents":1250[,"id":"o-1"]} -> 201 {"id","status"}
//	POST /orders/{id}/pay                                                      -> 200 {"id","status"}
//	POST /orders/{id}/cancel  [{"reason":"..."}]                               -> 200 {"id","status"}
//	GET  /orders/{id}         the read model                                   -> 200 OrderView
//	GET  /healthz             outbox pending / failed / oldest pending age     -> 200
//	GET  /metrics             Prometheus text format (when the app serves it)
//
// The POST endpoints dispatch commands on the bus; they answer with the
// write model's state once the command's transaction (with its events in
// the outbox) has committed. GET reads the read model, which the consumer
// fills from the broker: right after a POST it may still answer 404 or the
// previous status.
//
// Every error answer is {"error": "..."} with Content-Type
// application/json, also for routes the API does not have:
//
//	400  bad input: a body that is not one JSON object of the request's
//	     fields (a field unknown, spelt in another case or given twice, a
//	     wrong JSON type, anything after the object), a blank customer, a
//	     control character (NUL included) or invalid UTF-8 in a text
//	     field, a text too long, an amount not positive, a bad ID
//	404  unknown order, or no such route
//	405  a route with another method; the Allow header lists the methods
//	409  business rule: already paid, cancelled, ...
//	413  a body larger than 64 KiB
//	500  anything else (logged, and answered as "internal error")
//	503  the request was cancelled
//
// The messages name the JSON fields and JSON types ("amount_cents must be
// an integer, got a string"), never the Go types behind them.
package httpapi
