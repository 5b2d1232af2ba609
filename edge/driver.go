package edge

import "context"

// Driver relays messages between the instances of one cluster (a backplane:
// Redis pub/sub, Postgres LISTEN/NOTIFY, …). A Hub owns the Driver its Sync
// built: it calls Subscribe once, Publish and PublishBatch from one relay
// goroutine, and Close once. A publish-only Hub (Options.PublishOnly) never
// calls Subscribe: Publish must work without it.
type Driver interface {
	// Publish relays msg to the other instances. It may block on the
	// network until ctx is done.
	Publish(ctx context.Context, msg Message) error

	// Subscribe starts delivering messages published by other instances
	// to deliver. It is called once, when the Hub starts, with a ctx that
	// is done when the Hub closes; a publish-only Hub never calls it.
	//
	// It returns nil once the subscription is in place: a message that
	// another instance publishes after that is delivered. When the
	// backplane cannot be reached it returns the error, which the Hub
	// reports at StageSubscribe, and keeps trying in the background until
	// ctx is done, reporting later outages through Instance.Report.
	//
	// deliver must never be called with the instance's own messages, nor
	// after Close has returned. It does not block and may be called from
	// any goroutine.
	//
	// Every driver here reconnects by one rule: a lost connection is
	// reported once per outage, at StageSubscribe, when it is detected (a
	// dead connection within seconds, whatever the traffic); the attempts
	// that fail during the outage are not reported again, and recovery is
	// silent, so the next loss is reported anew. Attempts back off
	// exponentially with jitter, and a successful connection resets the
	// backoff.
	Subscribe(ctx context.Context, deliver func(Message)) error

	// Close releases what the driver opened. It never closes clients
	// that the user passed in.
	Close() error
}

// BatchDriver is a Driver that can relay many messages in one round trip (a
// Redis pipeline, a pgx.Batch). The Hub uses PublishBatch whenever its
// outbound queue holds more than one message.
type BatchDriver interface {
	Driver
	// PublishBatch relays msgs to the other instances, in one round trip
	// where it can. It must not keep msgs after it returns.
	PublishBatch(ctx context.Context, msgs []Message) error
}

// Instance is what a driver learns about the Hub it serves.
type Instance struct {
	// ID is the Hub's instance id. A driver stamps it on what it sends and
	// drops what it receives with its own ID (its echo).
	ID string

	// Report hands an error the driver met in the background (a lost
	// connection, a malformed envelope) to the Hub's OnError. It is never nil.
	Report func(err error, stage Stage)

	// Inbound counts one payload of size bytes that the driver read off
	// the backplane for this instance, into Stats.BackplaneMessages and
	// Stats.BackplaneBytes. A driver calls it, through CountInbound, for
	// every payload it receives, before any filtering: its own echo, a
	// liveness probe, another topic of a shared routing bucket, a payload
	// too large or malformed are all counted, so that the counters show
	// the traffic the backplane sends the instance, which Stats.Received
	// (what the driver handed on) does not. It does not block and may be
	// called from any goroutine. A Hub always sets it; it may be nil when
	// a driver is built by other code.
	Inbound func(size int)
}

// CountInbound calls i.Inbound with size, unless it is nil.
func (i Instance) CountInbound(size int) {
	if i.Inbound != nil {
		i.Inbound(size)
	}
}

// Sync builds the Driver of one instance. Validation errors (a missing
// channel name, an unusable client) surface here, and so from New.
type Sync func(Instance) (Driver, error)

// Stage says where a backplane error happened.
type Stage string

// The stages reported to Options.OnError.
const (
	StageSubscribe Stage = "subscribe" // connecting to the backplane, initially or again
	StagePublish   Stage = "publish"   // relaying out: to the driver or to the Gateway
	StageDelivery  Stage = "delivery"  // receiving: decoding and fanning out inbound messages
)

// ErrorInfo describes a reported error.
type ErrorInfo struct {
	Stage Stage // where the error happened
}
