package edge_test

import (
	"context"
	"sync"

	"github.com/edgesync/edgesync/edge"
)

// fakeDriver is a Driver whose failures a test chooses. Real drivers are
// tested against real servers in drivers/…; this one exercises the Hub alone.
type fakeDriver struct {
	subscribeErr  error
	publishErr    error
	publishPanics bool
	block         chan struct{} // when set, Publish waits for it to close
	honourCtx     bool          // while blocked, give up when ctx is done
	entered       chan struct{} // signalled each time Publish starts

	mu      sync.Mutex
	deliver func(edge.Message)
	sent    []edge.Message
	batches []int
	closed  bool
}

func newFakeDriver() *fakeDriver { return &fakeDriver{entered: make(chan struct{}, 100)} }

func (d *fakeDriver) sync(edge.Instance) (edge.Driver, error) { return d, nil }

func (d *fakeDriver) Subscribe(ctx context.Context, deliver func(edge.Message)) error {
	d.mu.Lock()
	d.deliver = deliver
	d.mu.Unlock()
	return d.subscribeErr
}

func (d *fakeDriver) Publish(ctx context.Context, msg edge.Message) error {
	return d.PublishBatch(ctx, []edge.Message{msg})
}

func (d *fakeDriver) PublishBatch(ctx context.Context, msgs []edge.Message) error {
	d.entered <- struct{}{}
	if d.block != nil {
		if d.honourCtx {
			select {
			case <-d.block:
			case <-ctx.Done():
				return ctx.Err()
			}
		} else {
			<-d.block
		}
	}
	if d.publishPanics {
		panic("driver bug")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sent = append(d.sent, msgs...)
	d.batches = append(d.batches, len(msgs))
	return d.publishErr
}

func (d *fakeDriver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

func (d *fakeDriver) published() []edge.Message {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]edge.Message(nil), d.sent...)
}

func (d *fakeDriver) batchSizes() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]int(nil), d.batches...)
}

func (d *fakeDriver) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

type gatewayCall struct {
	msg    edge.Message
	except string
}

type fakeGateway struct {
	mu    sync.Mutex
	calls []gatewayCall
}

func (g *fakeGateway) Deliver(ctx context.Context, msg edge.Message, except string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, gatewayCall{msg, except})
	return nil
}

func (g *fakeGateway) delivered() []gatewayCall {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]gatewayCall(nil), g.calls...)
}
