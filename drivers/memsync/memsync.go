// Package memsync is the in-process backplane of edgesync and an in-memory
// edge.Registry.
//
// A Bus connects the hubs of one process: hubs whose Sync was made by New on
// the same Bus and the same channel name relay to each other, synchronously
// and without copying. It serves tests, single-process deployments that run
// several hubs, and goroutine-based simulations of a cluster. Registry keeps
// gateway-held connections in memory, for tests and a single instance.
package memsync

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"

	"github.com/edgesync/edgesync/edge"
)

// Bus connects the hubs of one process. The zero value is ready to use. A
// Bus must not be copied after first use.
type Bus struct {
	mu sync.Mutex
	// channels holds the subscribed drivers of each channel. A slice is
	// never modified once stored: joining and leaving store a new one, so
	// a publisher can read it after releasing mu.
	channels map[string][]*driver
}

func (b *Bus) join(d *driver) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.channels == nil {
		b.channels = make(map[string][]*driver)
	}
	list := b.channels[d.channel]
	if slices.Contains(list, d) {
		return
	}
	b.channels[d.channel] = append(slices.Clip(list), d)
}

func (b *Bus) leave(d *driver) {
	b.mu.Lock()
	defer b.mu.Unlock()
	list := b.channels[d.channel]
	i := slices.Index(list, d)
	if i < 0 {
		return
	}
	if len(list) == 1 {
		delete(b.channels, d.channel)
		return
	}
	b.channels[d.channel] = slices.Delete(slices.Clone(list), i, i+1)
}

// subscribers returns the drivers subscribed to channel. The caller must not
// modify the slice.
func (b *Bus) subscribers(channel string) []*driver {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.channels[channel]
}

// Options configure the Sync that New returns.
type Options struct {
	// Bus is the bus the instance relays through. It is required.
	Bus *Bus
	// Channel scopes the cluster on the Bus: instances on another channel
	// never see each other. It is required.
	Channel string
	// Routed relays by topic (edge.RoutedDriver): an instance receives
	// only the messages of the topics its Hub routes, as a routed driver
	// over a network does, so that routed clusters can be tried and tested
	// in one process. Every instance of a channel should agree on it.
	//
	// The Bus plays the broker: an instance counts (edge.Instance.Inbound)
	// the messages the Bus hands it, every message of the channel but its
	// own in broadcast mode and only those of its routed topics in routed
	// mode, each as the size of its body, since nothing is encoded.
	Routed bool
}

// New returns the Sync of one instance on opts.Channel of opts.Bus. Hubs on
// one Bus sharing a channel name relay to each other; another channel or
// another Bus never bridges. A missing Bus or empty Channel is an error from
// the Sync (so from edge.New).
//
// Publish delivers synchronously, on the publisher's goroutine, to every
// other instance of the channel. Message bodies are shared, not copied, as
// edge.Data requires.
func New(opts Options) edge.Sync {
	return func(inst edge.Instance) (edge.Driver, error) {
		switch {
		case opts.Bus == nil:
			return nil, errors.New("memsync: Options.Bus is nil")
		case opts.Channel == "":
			return nil, errors.New("memsync: Options.Channel is empty")
		case inst.ID == "":
			return nil, errors.New("memsync: instance has no ID")
		}
		d := &driver{bus: opts.Bus, channel: opts.Channel, inst: inst}
		if opts.Routed {
			d.routes = make(map[string]bool)
			return routedDriver{d}, nil
		}
		return d, nil
	}
}

// routedDriver is a driver that receives only the topics it routes.
type routedDriver struct{ *driver }

var _ edge.RoutedDriver = routedDriver{}

// Route adds topic to the topics the instance receives, or removes it.
func (d routedDriver) Route(topic string, want bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if want {
		d.routes[topic] = true
	} else {
		delete(d.routes, topic)
	}
}

// errClosed is returned by Publish, PublishBatch and Subscribe after Close.
var errClosed = fmt.Errorf("memsync: driver closed: %w", edge.ErrClosed)

// driver is the edge.BatchDriver of one instance on a Bus.
type driver struct {
	bus     *Bus
	channel string
	inst    edge.Instance

	mu         sync.Mutex
	closed     bool
	subscribed bool
	deliver    func(edge.Message)
	routes     map[string]bool // the routed topics; nil: every topic (broadcast)

	// inflight counts calls of deliver under way. Add is only called
	// under mu while closed is false, so every Add happens before Close
	// starts to Wait.
	inflight sync.WaitGroup
}

var _ edge.BatchDriver = (*driver)(nil)

// Subscribe joins the channel: from its return on, messages that other
// instances publish on the channel are passed to deliver, until Close.
func (d *driver) Subscribe(ctx context.Context, deliver func(edge.Message)) error {
	if deliver == nil {
		return errors.New("memsync: subscribe: deliver is nil")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memsync: subscribe: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return errClosed
	case d.subscribed:
		return errors.New("memsync: subscribe: already subscribed")
	}
	d.subscribed = true
	d.deliver = deliver
	d.bus.join(d)
	return nil
}

// Publish delivers msg to every other instance on the channel before it
// returns.
func (d *driver) Publish(ctx context.Context, msg edge.Message) error {
	return d.publish(ctx, []edge.Message{msg})
}

// PublishBatch delivers every message of msgs to every other instance on the
// channel before it returns.
func (d *driver) PublishBatch(ctx context.Context, msgs []edge.Message) error {
	return d.publish(ctx, msgs)
}

func (d *driver) publish(ctx context.Context, msgs []edge.Message) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memsync: publish: %w", err)
	}
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return errClosed
	}
	for _, peer := range d.bus.subscribers(d.channel) {
		if peer.inst.ID != d.inst.ID {
			peer.receive(msgs)
		}
	}
	return nil
}

// receive hands msgs to the instance's deliver callback, unless the driver
// is closed. Close waits for a receive under way, so that deliver is never
// called after Close has returned.
func (d *driver) receive(msgs []edge.Message) {
	d.mu.Lock()
	if d.closed || d.deliver == nil {
		d.mu.Unlock()
		return
	}
	deliver := d.deliver
	if d.routes != nil {
		var wanted []edge.Message
		for _, msg := range msgs {
			if d.routes[msg.Topic] {
				wanted = append(wanted, msg)
			}
		}
		msgs = wanted
	}
	for _, msg := range msgs {
		d.inst.CountInbound(len(msg.Data.Bytes))
	}
	d.inflight.Add(1)
	d.mu.Unlock()
	defer d.inflight.Done()
	for _, msg := range msgs {
		d.deliverOne(deliver, msg)
	}
}

// deliverOne calls deliver, so that a panic in one instance's callback
// reaches neither the publisher nor the other instances.
func (d *driver) deliverOne(deliver func(edge.Message), msg edge.Message) {
	defer func() {
		if v := recover(); v != nil && d.inst.Report != nil {
			d.inst.Report(&edge.PanicError{Value: v, Stack: debug.Stack()}, edge.StageDelivery)
		}
	}()
	deliver(msg)
}

// Close leaves the channel and waits for deliveries under way to return. It
// must not be called from the deliver callback. Close is idempotent.
func (d *driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()

	d.bus.leave(d)
	d.inflight.Wait()

	d.mu.Lock()
	d.deliver = nil
	d.mu.Unlock()
	return nil
}
