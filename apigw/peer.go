package apigw

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// ErrNotConnected is returned by the Send of a peer whose $connect event is
// still being handled, that is, from Hooks.Open: API Gateway refuses posts
// to a connection until $connect has returned. Greet a client in reply to
// its first message instead; Subscribe, Publish and Attr work during Open.
var ErrNotConnected = errors.New("apigw: connection not established until $connect has returned")

// peer is a connection that API Gateway holds, rebuilt for one event from
// the Registry. It is an edge.Peer: Send posts to the connection, Close
// deletes it, Subscribe, Unsubscribe and Topics use the Registry, and
// Publish goes through the Hub.
type peer struct {
	h        *Handler
	conn     edge.Conn
	gone     bool      // rebuilt for $disconnect: the connection has closed
	deadline time.Time // the invocation's, less the margin for the response; zero: none

	mu         sync.Mutex
	connecting bool // in $connect: not postable yet
	closed     bool // Close was called during $connect
	code       int
	reason     string
}

var _ edge.Peer = (*peer)(nil)

func (h *Handler) peer(ctx context.Context, c edge.Conn, connecting bool) *peer {
	p := &peer{h: h, conn: c, connecting: connecting}
	if dl, ok := ctx.Deadline(); ok {
		p.deadline = dl.Add(-flushMargin)
	}
	return p
}

// ID returns the API Gateway connection id.
func (p *peer) ID() string { return p.conn.ID }

// Namespace returns the namespace Upgrade chose, as the Registry keeps it.
func (p *peer) Namespace() string { return p.conn.Namespace }

// Attr returns an attribute Upgrade set, as the Registry keeps it.
func (p *peer) Attr(key string) string { return p.conn.Attrs[key] }

// Send posts d to the connection.
func (p *peer) Send(ctx context.Context, d edge.Data) error {
	p.mu.Lock()
	connecting := p.connecting
	p.mu.Unlock()
	if connecting {
		return ErrNotConnected
	}
	ctx, cancel := p.bound(ctx)
	defer cancel()
	return p.h.Gateway.Post(ctx, p.conn.ID, d)
}

// Publish sends d to every other subscriber of topic in the peer's
// namespace: gateway-held ones through the Hub's Gateway, the others through
// its driver.
func (p *peer) Publish(ctx context.Context, topic string, d edge.Data) error {
	return p.h.Hub.PublishFrom(ctx, edge.Message{Namespace: p.conn.Namespace, Topic: topic, Data: d}, p.conn.ID)
}

// Subscribe adds topic to the connection's subscriptions in the Registry.
func (p *peer) Subscribe(ctx context.Context, topic string) error {
	if topic == "" {
		return edge.ErrInvalidTopic
	}
	if strings.HasPrefix(topic, edge.PeerTopicPrefix) {
		return edge.ErrReservedTopic
	}
	if err := p.h.Registry.Subscribe(ctx, p.conn.ID, topic); err != nil {
		return fmt.Errorf("apigw: subscribe %q: %w", topic, err)
	}
	return nil
}

// Unsubscribe removes topic from the connection's subscriptions.
func (p *peer) Unsubscribe(ctx context.Context, topic string) error {
	if err := p.h.Registry.Unsubscribe(ctx, p.conn.ID, topic); err != nil {
		return fmt.Errorf("apigw: unsubscribe %q: %w", topic, err)
	}
	return nil
}

// Topics returns the connection's subscriptions, sorted.
func (p *peer) Topics(ctx context.Context) ([]string, error) {
	topics, err := p.h.Registry.Topics(ctx, p.conn.ID)
	if err != nil {
		return nil, fmt.Errorf("apigw: topics: %w", err)
	}
	return topics, nil
}

// Close ends the connection. During $connect it refuses the connection;
// afterwards it deletes it (DeleteConnection), and the $disconnect event
// that follows calls Hooks.Close. API Gateway closes the socket with a
// status of its own: code and reason reach Hooks.Close only for a refused
// $connect.
func (p *peer) Close(code int, reason string) error {
	p.mu.Lock()
	if p.connecting {
		if !p.closed {
			p.closed, p.code, p.reason = true, code, reason
		}
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()
	if p.gone {
		return nil
	}
	ctx, cancel := p.bound(context.Background())
	defer cancel()
	if err := p.h.Gateway.Delete(ctx, p.conn.ID); err != nil && !errors.Is(err, ErrGone) {
		return err
	}
	return nil
}

// bound bounds ctx by the invocation's deadline: a post's retries must not
// outlast the function's timeout, which would lose the response.
func (p *peer) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if p.deadline.IsZero() {
		return context.WithCancel(ctx)
	}
	return context.WithDeadline(ctx, p.deadline)
}

// refused reports whether Close was called during $connect.
func (p *peer) refused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// closeStatus returns the status Close was called with during $connect.
func (p *peer) closeStatus() (int, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.code, p.reason
}

// connected marks the end of $connect: from now on the peer's Send posts.
func (p *peer) connected() {
	p.mu.Lock()
	p.connecting = false
	p.mu.Unlock()
}
