package edge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"
)

// WebSocket close statuses the core uses.
const (
	StatusGoingAway     = 1001 // the hub is closing
	StatusInternalError = 1011 // a hook or an endpoint panicked
)

// Endpoint is the write side of a peer held in this process, as a front end
// implements it. The Hub calls Deliver for every message addressed to the
// peer and Close when the Hub closes.
type Endpoint interface {
	// Deliver queues d for the peer. It must not block and must not call
	// back into the Hub: it runs inside the publisher's call.
	Deliver(d Data)
	// Close starts closing the peer's connection with a WebSocket close
	// status. It should not wait for the close handshake: Hub.Close calls
	// it for every peer in turn.
	Close(code int, reason string) error
}

// Member is a peer held in this process, joined to a Hub: its
// subscriptions, and its publishes that skip it. Front ends build their Peer
// on a Member. A Member is safe for concurrent use.
type Member struct {
	hub       *Hub
	id        string
	namespace string
	ep        Endpoint
	joined    time.Time
	topics    map[string]struct{} // guarded by hub.mu
	attrs     map[string]string   // guarded by hub.mu
	left      bool                // guarded by hub.mu
	broken    atomic.Bool         // its endpoint panicked: it is leaving with 1011
}

// Join adds a peer held in this process to the Hub. id must be unique in the
// cluster (NewID makes one; joining an id that is joined already is an error)
// and namespace must not be empty. The peer
// receives nothing until it subscribes; call Leave when its connection ends.
func (h *Hub) Join(id, namespace string, ep Endpoint) (*Member, error) {
	if id == "" || namespace == "" || ep == nil {
		return nil, errors.New("edge: join needs an id, a namespace and an endpoint")
	}
	m := &Member{hub: h, id: id, namespace: namespace, ep: ep, joined: time.Now(), topics: make(map[string]struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	if _, ok := h.members[id]; ok {
		return nil, fmt.Errorf("edge: join: a peer with id %q is joined already", id)
	}
	h.members[id] = m
	h.route(PeerTopicPrefix+id, true)
	return m, nil
}

// ID returns the member's peer id.
func (m *Member) ID() string { return m.id }

// Namespace returns the member's namespace.
func (m *Member) Namespace() string { return m.namespace }

// Subscribe adds topic to the member's subscriptions. Subscribing twice is
// the same as once.
func (m *Member) Subscribe(topic string) error {
	if topic == "" {
		return ErrInvalidTopic
	}
	if reserved(topic) {
		return ErrReservedTopic
	}
	h := m.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if m.left {
		return ErrClosed
	}
	if _, ok := m.topics[topic]; ok {
		return nil
	}
	topics := h.spaces[m.namespace]
	if topics == nil {
		topics = make(map[string]*memberSet)
		h.spaces[m.namespace] = topics
	}
	set := topics[topic]
	if set == nil {
		set = &memberSet{index: make(map[*Member]int)}
		topics[topic] = set
		h.topicGained(topic)
	}
	set.add(m)
	if len(m.topics) == 0 {
		h.presenceChange(presenceOp{kind: presenceAdd, conn: m.conn(time.Now().Add(h.presenceTTL))})
	}
	m.topics[topic] = struct{}{}
	h.presenceChange(presenceOp{kind: presenceSubscribe, conn: Conn{ID: m.id}, topic: topic})
	return nil
}

// Unsubscribe removes topic from the member's subscriptions.
func (m *Member) Unsubscribe(topic string) error {
	h := m.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if m.left {
		return ErrClosed
	}
	if _, ok := m.topics[topic]; ok {
		m.unsubscribeLocked(topic)
		h.presenceChange(presenceOp{kind: presenceUnsubscribe, conn: Conn{ID: m.id}, topic: topic})
	}
	return nil
}

func (m *Member) unsubscribeLocked(topic string) {
	if _, ok := m.topics[topic]; !ok {
		return
	}
	delete(m.topics, topic)
	topics := m.hub.spaces[m.namespace]
	set := topics[topic]
	set.remove(m)
	if len(set.list) == 0 {
		delete(topics, topic)
		m.hub.topicLost(topic)
		if len(topics) == 0 {
			delete(m.hub.spaces, m.namespace)
		}
	}
}

// Topics returns the member's subscriptions, sorted.
func (m *Member) Topics() []string {
	m.hub.mu.RLock()
	topics := make([]string, 0, len(m.topics))
	for t := range m.topics {
		topics = append(topics, t)
	}
	m.hub.mu.RUnlock()
	slices.Sort(topics)
	return topics
}

// Publish sends d to every subscriber of topic in the member's namespace,
// cluster-wide, except the member itself. Like Hub.Publish it never waits
// for the network.
func (m *Member) Publish(ctx context.Context, topic string, d Data) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return m.hub.publish(Message{Namespace: m.namespace, Topic: topic, Data: d}, m.id)
}

// Leave removes the member and its subscriptions from the Hub. It is
// idempotent.
func (m *Member) Leave() {
	h := m.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if m.left {
		return
	}
	if len(m.topics) > 0 {
		h.presenceChange(presenceOp{kind: presenceRemove, conn: Conn{ID: m.id}})
	}
	for t := range m.topics {
		m.unsubscribeLocked(t)
	}
	m.left = true
	delete(h.members, m.id)
	h.route(PeerTopicPrefix+m.id, false)
}

// closeEndpoint closes the member's connection, isolating a panic.
func (m *Member) closeEndpoint(code int, reason string) {
	defer func() {
		if v := recover(); v != nil {
			m.hub.report(&PanicError{Value: v}, StageDelivery)
		}
	}()
	_ = m.ep.Close(code, reason)
}

// memberSet is the members subscribed to one topic: a slice for fast
// fan-out, an index for O(1) removal.
type memberSet struct {
	list  []*Member
	index map[*Member]int
}

func (s *memberSet) add(m *Member) {
	s.index[m] = len(s.list)
	s.list = append(s.list, m)
}

func (s *memberSet) remove(m *Member) {
	i, ok := s.index[m]
	if !ok {
		return
	}
	last := len(s.list) - 1
	s.list[i] = s.list[last]
	s.index[s.list[i]] = i
	s.list[last] = nil
	s.list = s.list[:last]
	delete(s.index, m)
}
