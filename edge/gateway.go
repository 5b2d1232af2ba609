package edge

import (
	"context"
	"time"
)

// Gateway reaches peers that an external gateway holds, such as the
// connections of an API Gateway WebSocket API.
//
// Only the instance where a message is published (its origin) calls Deliver,
// once per message; messages received from the backplane are never handed to
// the Gateway. except is the id of the publishing peer, or "" for a
// server-side publish.
type Gateway interface {
	Deliver(ctx context.Context, msg Message, except string) error
}

// DefaultConnTTL is how long a Registry keeps a connection added with a
// zero ExpiresAt: the longest an API Gateway WebSocket connection lives.
const DefaultConnTTL = 2 * time.Hour

// Conn is one gateway-held connection as a Registry keeps it.
type Conn struct {
	ID          string            // the connection id the gateway gave it
	Namespace   string            // the namespace its peer publishes and subscribes in
	Attrs       map[string]string // the attributes Hooks.Upgrade set
	ConnectedAt time.Time         // when it connected
	// ExpiresAt is when the Registry forgets the connection. The zero
	// value lets the Registry choose (API Gateway closes a connection after
	// two hours at most).
	ExpiresAt time.Time
}

// Registry keeps the state of gateway-held peers: each connection, its
// namespace, attributes, topics and expiry. Implementations are safe for
// concurrent use. An expired connection behaves as one that was removed.
type Registry interface {
	// Add stores c, replacing any connection with the same ID.
	Add(ctx context.Context, c Conn) error
	// Remove forgets the connection and all its subscriptions. Removing an
	// unknown connection is not an error.
	Remove(ctx context.Context, id string) error
	// Get returns the connection, or an error wrapping ErrNotFound.
	Get(ctx context.Context, id string) (Conn, error)
	// Subscribe adds topic to the connection's subscriptions. It returns an
	// error wrapping ErrNotFound for an unknown connection.
	Subscribe(ctx context.Context, id, topic string) error
	// Unsubscribe removes topic from the connection's subscriptions.
	Unsubscribe(ctx context.Context, id, topic string) error
	// Topics returns the connection's topics, sorted.
	Topics(ctx context.Context, id string) ([]string, error)
	// Subscribers calls each with the id of every live connection
	// subscribed to topic in namespace ("" means every namespace) until
	// each returns false. It does not hold the whole set in memory.
	Subscribers(ctx context.Context, namespace, topic string, each func(id string) bool) error
}
