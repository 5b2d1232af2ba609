package edge

import (
	"context"
	"net/http"
	"strconv"
)

// Hooks are the application. Every field is optional, and the same Hooks run
// on every front end. A panic in a hook is recovered, reported to Error, and
// closes only that peer (status 1011); front ends run them through a
// HookRunner, which does this the same way for all.
type Hooks struct {
	// Upgrade decides whether a connection is accepted. A non-nil error
	// refuses it: a *Reject sets the HTTP response, any other error is
	// answered 403 Forbidden.
	Upgrade func(r *http.Request) (Accept, error)
	// Open is called once the connection is accepted. The peer may
	// subscribe, unsubscribe, publish and read its attributes. Whether it
	// may already Send depends on who holds the socket: a peer held in
	// memory (longlived) can; a peer held by an external gateway may not
	// be reachable until the connect request has been answered (API
	// Gateway refuses posts until then), and its Send returns the front
	// end's documented error. Send a greeting in reply to the first
	// message to work on every front end.
	Open func(p Peer)
	// Message is called for every message the peer sends, one at a time.
	Message func(p Peer, d Data)
	// Close is called once when the connection has closed, with the close
	// status (1006 when the connection dropped without one).
	Close func(p Peer, code int, reason string)
	// Error is called with what went wrong for this peer: a recovered
	// panic, a slow consumer, a failed write.
	Error func(p Peer, err error)
}

// Accept is what Upgrade decides for an accepted connection.
type Accept struct {
	// Namespace overrides the default namespace, DefaultNamespace: the
	// request's URL path.
	Namespace string
	// Attrs are per-connection attributes, read back with Peer.Attr. They
	// are strings so that a front end can persist them.
	Attrs map[string]string
	// Header is added to the upgrade response. A Sec-WebSocket-Protocol
	// value selects the subprotocol.
	Header http.Header
}

// Reject is an error that refuses an upgrade with its own HTTP response.
type Reject struct {
	Status int         // HTTP status; 0 means 403 Forbidden
	Body   string      // response body; "" means the status text
	Header http.Header // extra response headers
}

// Error implements error.
func (r *Reject) Error() string {
	return "edge: upgrade rejected: " + strconv.Itoa(r.StatusCode()) + " " + r.Text()
}

// StatusCode returns the HTTP status of the response.
func (r *Reject) StatusCode() int {
	if r.Status == 0 {
		return http.StatusForbidden
	}
	return r.Status
}

// Text returns the body of the response.
func (r *Reject) Text() string {
	if r.Body == "" {
		return http.StatusText(r.StatusCode())
	}
	return r.Body
}

// Peer is one connected client, wherever its socket is held.
type Peer interface {
	// ID returns the peer's id, unique in the cluster.
	ID() string
	// Namespace returns the namespace the peer publishes and subscribes in.
	Namespace() string
	// Attr returns the attribute that Upgrade set under key, or "".
	Attr(key string) string
	// Send sends d to this peer only.
	Send(ctx context.Context, d Data) error
	// Publish sends d to every subscriber of topic in the peer's
	// namespace, cluster-wide, except the peer itself.
	Publish(ctx context.Context, topic string, d Data) error
	// Subscribe adds topic to the peer's subscriptions.
	Subscribe(ctx context.Context, topic string) error
	// Unsubscribe removes topic from the peer's subscriptions.
	Unsubscribe(ctx context.Context, topic string) error
	// Topics returns the peer's subscriptions, sorted.
	Topics(ctx context.Context) ([]string, error)
	// Close closes the connection with a WebSocket close status and reason.
	Close(code int, reason string) error
}
