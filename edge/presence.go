package edge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// DefaultPresenceTTL is how long a presence record outlives the instance
// that wrote it, when Options.PresenceTTL is 0.
const DefaultPresenceTTL = 15 * time.Second

// Present is one peer that Hub.Presence lists.
type Present struct {
	ID        string            // the peer's id
	Namespace string            // its namespace
	Attrs     map[string]string // the attributes Upgrade set
}

// RegistryGateway is a Gateway whose peers an edge.Registry keeps. A Hub
// whose Gateway is one lists those peers in Presence.
type RegistryGateway interface {
	Gateway
	// Registry returns the Registry of the Gateway's peers.
	Registry() Registry
}

// presenceOp is one change of a member's presence, applied in order by the
// presence worker.
type presenceOp struct {
	kind  presenceKind
	conn  Conn   // for presenceAdd
	topic string // for presenceSubscribe and presenceUnsubscribe
	epoch *epoch // for Flush
}

type presenceKind int

const (
	presenceAdd presenceKind = iota
	presenceSubscribe
	presenceUnsubscribe
	presenceRemove
)

// SetAttrs sets the attributes that Hub.Presence lists for the member. Set
// them before the member's first Subscribe.
func (m *Member) SetAttrs(attrs map[string]string) {
	m.hub.mu.Lock()
	m.attrs = maps.Clone(attrs)
	m.hub.mu.Unlock()
}

// conn returns the member as a presence record expiring at expires. h.mu is
// held.
func (m *Member) conn(expires time.Time) Conn {
	return Conn{ID: m.id, Namespace: m.namespace, Attrs: m.attrs, ConnectedAt: m.joined, ExpiresAt: expires}
}

// presenceChange queues a change of presence for the worker. h.mu is held.
func (h *Hub) presenceChange(op presenceOp) {
	if h.presenceQueue == nil {
		return
	}
	op.epoch = h.pending.add()
	select {
	case h.presenceQueue <- op:
	default:
		h.pending.done(op.epoch)
		h.dropped.Add(1)
		h.report(fmt.Errorf("presence: %w", ErrQueueFull), StagePublish)
	}
}

// presenceWorker applies presence changes to the presence Registry in order,
// and every third of the TTL writes every member's record again, so that the
// records of a live instance never expire and those of a dead one do.
func (h *Hub) presenceWorker() {
	defer h.workers.Done()
	refresh := time.NewTicker(h.presenceTTL / 3)
	defer refresh.Stop()
	for {
		select {
		case <-h.ctx.Done():
			return
		case op := <-h.presenceQueue:
			h.settle(h.call(h.publishTimeout, func(ctx context.Context) error { return h.applyPresence(ctx, op) }), 1)
			h.pending.done(op.epoch)
		case <-refresh.C:
			h.refreshPresence()
		}
	}
}

func (h *Hub) applyPresence(ctx context.Context, op presenceOp) error {
	reg := h.presence
	switch op.kind {
	case presenceAdd:
		return reg.Add(ctx, op.conn)
	case presenceSubscribe:
		return reg.Subscribe(ctx, op.conn.ID, op.topic)
	case presenceUnsubscribe:
		return reg.Unsubscribe(ctx, op.conn.ID, op.topic)
	}
	return reg.Remove(ctx, op.conn.ID)
}

// refreshPresence writes the record of every member with a subscription
// again, with a new expiry.
func (h *Hub) refreshPresence() {
	expires := time.Now().Add(h.presenceTTL)
	type record struct {
		conn   Conn
		topics []string
	}
	h.mu.RLock()
	records := make([]record, 0, len(h.members))
	for _, m := range h.members {
		if len(m.topics) > 0 {
			records = append(records, record{m.conn(expires), slices.Collect(maps.Keys(m.topics))})
		}
	}
	h.mu.RUnlock()
	for _, r := range records {
		err := h.call(h.publishTimeout, func(ctx context.Context) error {
			if err := h.presence.Add(ctx, r.conn); err != nil {
				return err
			}
			for _, t := range r.topics {
				if err := h.presence.Subscribe(ctx, r.conn.ID, t); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			h.settle(fmt.Errorf("presence: refresh: %w", err), 1)
			return // the next refresh tries again
		}
	}
}

// Presence lists the peers subscribed to topic in namespace ("" means every
// namespace), cluster-wide: those held in this process, those that other
// instances record in Options.Presence, and those the Gateway's Registry
// keeps (when the Gateway is a RegistryGateway). Bound the answer time with
// ctx: the records are read from the shared Registries.
//
// A peer of an instance that died stays listed until its record expires,
// within Options.PresenceTTL (DefaultPresenceTTL, 15 s). Without a
// presence Registry, the peers of other long-lived instances are not
// listed.
func (h *Hub) Presence(ctx context.Context, namespace, topic string) ([]Present, error) {
	if topic == "" {
		return nil, ErrInvalidTopic
	}
	seen := make(map[string]bool)
	var list []Present
	h.mu.RLock()
	for ns, topics := range h.spaces {
		if namespace != "" && ns != namespace {
			continue
		}
		if set := topics[topic]; set != nil {
			for _, m := range set.list {
				seen[m.id] = true
				list = append(list, Present{ID: m.id, Namespace: m.namespace, Attrs: maps.Clone(m.attrs)})
			}
		}
	}
	h.mu.RUnlock()
	var regs []Registry
	if h.presence != nil {
		regs = append(regs, h.presence)
	}
	if rg, ok := h.gateway.(RegistryGateway); ok {
		regs = append(regs, rg.Registry())
	}
	var errs []error
	for _, reg := range regs {
		var ids []string
		err := reg.Subscribers(ctx, namespace, topic, func(id string) bool {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
			return true
		})
		if err != nil {
			errs = append(errs, err)
		}
		for _, id := range ids {
			c, err := reg.Get(ctx, id)
			if errors.Is(err, ErrNotFound) {
				continue // gone meanwhile
			}
			if err != nil {
				errs = append(errs, err)
				break
			}
			list = append(list, Present{ID: c.ID, Namespace: c.Namespace, Attrs: c.Attrs})
		}
	}
	slices.SortFunc(list, func(a, b Present) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.ID, b.ID))
	})
	if err := errors.Join(errs...); err != nil {
		return list, fmt.Errorf("edge: presence: %w", err)
	}
	return list, nil
}
