package edge

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// PeerTopicPrefix begins the topics that carry a message to one peer across
// the cluster (see Hub.SendTo): "$peer:" and the peer's id. Such topics are
// reserved: peers cannot subscribe or publish to them. On the wire they are
// ordinary envelopes, with namespace "" (every namespace), so a crossws
// instance on the channel receives them and delivers them to nobody.
const PeerTopicPrefix = "$peer:"

// ErrReservedTopic is returned for a subscription or publish to a topic that
// begins with PeerTopicPrefix.
var ErrReservedTopic = errors.New("edge: topics beginning with " + PeerTopicPrefix + " are reserved")

// PeerGateway is a Gateway that can also reach one peer it holds by id. A
// Hub whose Gateway is a PeerGateway uses it for SendTo.
type PeerGateway interface {
	Gateway
	// SendTo sends d to the peer with id. It returns an error wrapping
	// ErrNotFound when the Gateway holds no such peer, and nil when the
	// peer was held but has gone meanwhile.
	SendTo(ctx context.Context, id string, d Data) error
}

// SendTo sends d to the one peer with id, whichever instance or gateway holds
// it: a peer held in this process gets it at once; a peer the Gateway holds
// is posted to directly, within ctx and the GatewayTimeout; any other is
// reached through the backplane, on the peer's own topic (PeerTopicPrefix),
// by the instance that holds it.
//
// A peer that does not exist (any more) is not an error: like a publish to
// a topic with no subscribers, the message reaches nobody and nothing is
// kept. SendTo returns an error for invalid data, a closed Hub, a ctx done,
// and the Gateway's failure to post to a peer it holds.
func (h *Hub) SendTo(ctx context.Context, id string, d Data) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if id == "" {
		return errors.New("edge: SendTo needs a peer id")
	}
	if !d.Valid() {
		return ErrInvalidText
	}
	h.mu.RLock()
	if h.closed {
		h.mu.RUnlock()
		return ErrClosed
	}
	m := h.members[id]
	if m != nil {
		h.deliverTo(m, d)
	}
	h.mu.RUnlock()
	if m != nil {
		return nil
	}
	if pg, ok := h.gateway.(PeerGateway); ok {
		ctx, cancel := context.WithTimeout(ctx, h.gatewayTimeout)
		err := pg.SendTo(ctx, id, d)
		cancel()
		if !errors.Is(err, ErrNotFound) {
			if err != nil {
				return fmt.Errorf("edge: send to %q: %w", id, err)
			}
			return nil
		}
	}
	if h.relayQueue != nil {
		h.enqueueRelay(Message{Topic: PeerTopicPrefix + id, Data: d})
	}
	return nil
}

// reserved reports whether topic is a peer's own topic.
func reserved(topic string) bool { return strings.HasPrefix(topic, PeerTopicPrefix) }

// receivePeer delivers an inbound message on a peer's own topic to that
// peer, if this process holds it. h.mu is held for reading.
func (h *Hub) receivePeer(msg Message) {
	if m := h.members[msg.Topic[len(PeerTopicPrefix):]]; m != nil {
		h.deliverTo(m, msg.Data)
	}
}
