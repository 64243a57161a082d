package middleware

import (
	"cmp"
	"context"

	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/outbox"
)

// CommandProcessorOnHandle returns a hook for
// cqrs.CommandProcessorConfig.OnHandle that runs every command handler of a
// Watermill cqrs.CommandProcessor as a command under t: in a transaction
// (or joining the one the message's context carries), with the
// transaction (outbox.Tx) and the event collector (outbox.Emit) in the
// context the handler gets. The command's events are saved to the outbox
// just before commit; a handler error or panic rolls the business writes
// and the events back, and the processor nacks the message (or acks it,
// with AckCommandHandlingErrors) as usual.
//
// A cqrs.EventBus whose publisher is a gormstore.Publisher, called with
// that context, writes its events into the outbox of the same transaction
// instead of sending them to the broker: the forwarder relays them after
// commit.
//
// next, when not nil, is the OnHandle the processor would otherwise run;
// it runs inside the transaction, with params.Message's context set to the
// transaction's context (restored afterwards). With next nil the hook
// calls params.Handler.Handle. The command is named for event metadata by
// TransactionalConfig.CommandName (default cqrs.StructName). When the
// command message carries outbox.MetadataCorrelationID metadata (also the
// key of Watermill's CorrelationID middleware) and the context no
// correlation ID, the command's events share it.
//
// Delivery of the command is at least once: if the commit succeeds and the
// ack is lost, the broker delivers the command again and it runs again.
// Make handlers idempotent, for example with an inbox.
func (t *Transactional) CommandProcessorOnHandle(next cqrs.CommandProcessorOnHandleFn) cqrs.CommandProcessorOnHandleFn {
	return func(p cqrs.CommandProcessorOnHandleParams) error {
		return t.runMessage(p.Message, t.cfg.CommandName(p.Command), func(ctx context.Context) error {
			if next != nil {
				return next(p)
			}
			return p.Handler.Handle(ctx, p.Command)
		})
	}
}

// EventProcessorOnHandle is CommandProcessorOnHandle for the event handlers
// of a cqrs.EventProcessor (cqrs.EventProcessorConfig.OnHandle): each event
// is handled as a command named after the event, in a transaction whose
// events (a policy's or saga's reaction) go to the outbox.
func (t *Transactional) EventProcessorOnHandle(next cqrs.EventProcessorOnHandleFn) cqrs.EventProcessorOnHandleFn {
	return func(p cqrs.EventProcessorOnHandleParams) error {
		return t.runMessage(p.Message, t.cfg.CommandName(p.Event), func(ctx context.Context) error {
			if next != nil {
				return next(p)
			}
			return p.Handler.Handle(ctx, p.Event)
		})
	}
}

// EventGroupProcessorOnHandle is EventProcessorOnHandle for a
// cqrs.EventGroupProcessor (cqrs.EventGroupProcessorConfig.OnHandle).
func (t *Transactional) EventGroupProcessorOnHandle(next cqrs.EventGroupProcessorOnHandleFn) cqrs.EventGroupProcessorOnHandleFn {
	return func(p cqrs.EventGroupProcessorOnHandleParams) error {
		return t.runMessage(p.Message, t.cfg.CommandName(p.Event), func(ctx context.Context) error {
			if next != nil {
				return next(p)
			}
			return p.Handler.Handle(ctx, p.Event)
		})
	}
}

// HandlerMiddleware returns Watermill Router middleware that runs each
// message handler as a command under t, named after the Router handler
// (message.HandlerNameFromCtx): in a transaction, with the transaction and
// the event collector in the message's context (restored afterwards).
// The messages the handler returns are saved to the outbox in that
// transaction, for the handler's publish topic, instead of being published
// by the Router: the forwarder relays them after commit. A handler error
// or panic rolls everything back and the Router nacks the message.
//
// Use it for plain Router handlers; for cqrs processors prefer their
// OnHandle hooks above (using both nests the handler's transaction in a
// savepoint of the middleware's, which works but is redundant).
func (t *Transactional) HandlerMiddleware() message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			name := cmp.Or(message.HandlerNameFromCtx(msg.Context()), "message")
			err := t.runMessage(msg, name, func(ctx context.Context) error {
				produced, err := h(msg)
				if err != nil || len(produced) == 0 {
					return err
				}
				return outbox.EmitMessage(ctx, message.PublishTopicFromCtx(ctx), produced...)
			})
			return nil, err
		}
	}
}

// runMessage runs fn as the command name for the handler of msg, with
// msg's context set to the command's context while fn runs.
func (t *Transactional) runMessage(msg *message.Message, name string, fn func(ctx context.Context) error) error {
	orig := msg.Context()
	defer msg.SetContext(orig)
	ctx := orig
	if outbox.CorrelationID(ctx) == "" {
		if id := msg.Metadata.Get(outbox.MetadataCorrelationID); id != "" {
			ctx = outbox.WithCorrelationID(ctx, id)
		}
	}
	return t.Run(ctx, name, func(ctx context.Context) error {
		msg.SetContext(ctx)
		return fn(ctx)
	})
}
