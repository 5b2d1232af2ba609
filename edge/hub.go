package edge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the zero values of Options.
const (
	DefaultQueueSize      = 4096
	DefaultMaxBatch       = 256
	DefaultPublishTimeout = 2 * time.Second
	DefaultGatewayWorkers = 4
	DefaultGatewayTimeout = 30 * time.Second
)

// Options configure a Hub. The zero value is a hub alone: local delivery only.
type Options struct {
	// Sync builds the driver that relays to the other instances. nil
	// means alone: local delivery only.
	Sync Sync
	// PublishOnly builds the driver but never subscribes it: the Hub
	// relays what is published on it out to the other instances and
	// receives nothing from them. It is for an instance that holds no
	// peers in memory, such as a Lambda function behind API Gateway, which
	// then keeps no SUBSCRIBE or LISTEN connection of its own. Every driver
	// of this module supports it.
	PublishOnly bool
	// Gateway reaches peers held outside this process. nil means none.
	Gateway Gateway
	// Presence, when set, is where this instance records the peers it
	// holds in memory and their topics, so that Hub.Presence on any
	// instance lists them. Every instance of the cluster is given the same
	// Registry, one of its own: not the Gateway's, whose connections are
	// posted to (a Registry of the backplane's store, on another channel
	// name, does). nil records nothing.
	Presence Registry
	// PresenceTTL is how long a presence record outlives its instance:
	// records are written again every third of it, so the peers of an
	// instance that died drop out of Hub.Presence within PresenceTTL.
	// 0 means DefaultPresenceTTL.
	PresenceTTL time.Duration
	// OnError receives every backplane error with its stage. nil logs
	// with an ErrorLog of the Hub's own: once per interval for a repeated
	// kind of error, with a count. It must not block for long, and must
	// not call Close: it may run on the Hub's relay goroutine, which Close
	// waits for.
	OnError func(err error, info ErrorInfo)
	// Logger is where the default OnError logs. nil means slog.Default().
	Logger *slog.Logger

	// QueueSize bounds the outbound relay queue, and the Gateway's
	// queue, in messages. A full queue drops the message and reports
	// ErrQueueFull at StagePublish. 0 means DefaultQueueSize.
	QueueSize int
	// MaxBatch bounds how many queued messages one PublishBatch carries.
	// 0 means DefaultMaxBatch.
	MaxBatch int
	// PublishTimeout bounds one Driver.Publish or PublishBatch call: a
	// relay stuck on a dead connection gives up after it, and the next goes
	// out on a new connection. 0 means DefaultPublishTimeout.
	PublishTimeout time.Duration
	// GatewayTimeout bounds one Gateway.Deliver, which is a fan-out of a
	// post to every subscriber the Gateway holds; the Gateway bounds each
	// post itself. 0 means DefaultGatewayTimeout. Flush is bounded by its
	// own ctx, whatever this is.
	GatewayTimeout time.Duration
	// GatewayWorkers is how many Gateway deliveries run at once. 0 means
	// DefaultGatewayWorkers.
	GatewayWorkers int
}

// Hub is the sync core of one instance: it indexes the topics of the peers
// held in this process, delivers published messages to them, hands them to
// the Gateway and relays them through the Driver. A Hub is safe for
// concurrent use.
type Hub struct {
	id             string
	driver         Driver
	gateway        Gateway
	onError        func(error, ErrorInfo)
	errlog         *ErrorLog // the default OnError, flushed by Close
	maxBatch       int
	publishTimeout time.Duration
	gatewayTimeout time.Duration

	relayQueue    chan relayJob
	gatewayQueue  chan gatewayJob
	presence      Registry
	presenceTTL   time.Duration
	presenceQueue chan presenceOp
	pending       tracker
	workers       sync.WaitGroup
	failing       sync.WaitGroup // members whose endpoint panicked, leaving

	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.RWMutex
	closed  bool
	spaces  map[string]map[string]*memberSet // namespace → topic → members
	members map[string]*Member               // by peer id

	router    RoutedDriver   // the driver, when it relays by topic
	topicRefs map[string]int // topic → namespaces with a local subscriber, when routed

	published, relayed, received, dropped atomic.Uint64
	inboundMsgs, inboundBytes             atomic.Uint64 // read off the backplane, see Instance.Inbound
	errs                                  [numStages]atomic.Uint64
}

// relayJob is a message queued for the driver, with the Flush epoch it
// belongs to.
type relayJob struct {
	msg   Message
	epoch *epoch
}

// gatewayJob is a message queued for the Gateway.
type gatewayJob struct {
	msg    Message
	except string
	epoch  *epoch
}

// New starts a Hub. It builds the driver with opts.Sync, returning its error,
// and subscribes it unless opts.PublishOnly is set; a subscribe failure is
// reported at StageSubscribe, not returned, because local delivery never
// depends on the backplane.
func New(opts Options) (*Hub, error) {
	ctx, cancel := context.WithCancel(context.Background())
	h := &Hub{
		id:             NewID(),
		gateway:        opts.Gateway,
		onError:        opts.OnError,
		maxBatch:       orDefault(opts.MaxBatch, DefaultMaxBatch),
		publishTimeout: orDefault(opts.PublishTimeout, DefaultPublishTimeout),
		gatewayTimeout: orDefault(opts.GatewayTimeout, DefaultGatewayTimeout),
		ctx:            ctx,
		cancel:         cancel,
		spaces:         make(map[string]map[string]*memberSet),
		members:        make(map[string]*Member),
	}
	if h.onError == nil {
		h.errlog = &ErrorLog{Logger: opts.Logger}
		h.onError = h.errlog.Report
	}
	queueSize := orDefault(opts.QueueSize, DefaultQueueSize)
	if opts.Sync != nil {
		d, err := buildDriver(opts.Sync, Instance{ID: h.id, Report: h.report, Inbound: h.inbound})
		if err != nil {
			cancel()
			return nil, fmt.Errorf("edge: sync: %w", err)
		}
		h.driver = d
		if rd, ok := d.(RoutedDriver); ok && !opts.PublishOnly {
			h.router, h.topicRefs = rd, make(map[string]int)
		}
		h.relayQueue = make(chan relayJob, queueSize)
		h.workers.Add(1)
		go h.relay()
		if !opts.PublishOnly {
			if err := h.subscribe(); err != nil {
				h.report(err, StageSubscribe)
			}
		}
	}
	if opts.Presence != nil {
		h.presence = opts.Presence
		h.presenceTTL = orDefault(opts.PresenceTTL, DefaultPresenceTTL)
		h.presenceQueue = make(chan presenceOp, queueSize)
		h.workers.Add(1)
		go h.presenceWorker()
	}
	if h.gateway != nil {
		h.gatewayQueue = make(chan gatewayJob, queueSize)
		for range orDefault(opts.GatewayWorkers, DefaultGatewayWorkers) {
			h.workers.Add(1)
			go h.deliverToGateway()
		}
	}
	return h, nil
}

func buildDriver(sync Sync, inst Instance) (d Driver, err error) {
	defer recoverInto(&err)
	d, err = sync(inst)
	if err == nil && d == nil {
		err = errors.New("Sync returned a nil Driver")
	}
	return d, err
}

func (h *Hub) subscribe() (err error) {
	defer recoverInto(&err)
	return h.driver.Subscribe(h.ctx, h.receive)
}

// ID returns the instance id, random for every Hub. Drivers stamp it on what
// they relay so that an instance can recognise its own echo.
func (h *Hub) ID() string { return h.id }

// Publish delivers msg to the subscribers of its topic: synchronously to the
// peers held in this process, then through the Gateway and the Driver to the
// rest of the cluster. An empty msg.Namespace reaches every namespace.
//
// Publish does not wait for the network: relays are queued and their failures
// go to OnError. It returns an error only for an invalid message (an empty
// topic, text that is not UTF-8), a closed Hub or a ctx already done.
func (h *Hub) Publish(ctx context.Context, msg Message) error {
	return h.PublishFrom(ctx, msg, "")
}

// PublishFrom is Publish on behalf of the peer with id from: that peer is
// skipped, whether it is held in this process or by the Gateway, and every
// other subscriber is reached. It is how a front end whose peers are not
// Members (a gateway-held connection) publishes for them. An empty from is
// Publish.
func (h *Hub) PublishFrom(ctx context.Context, msg Message, from string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return h.publish(msg, from)
}

func (h *Hub) publish(msg Message, from string) error {
	if msg.Topic == "" {
		return ErrInvalidTopic
	}
	if reserved(msg.Topic) {
		return ErrReservedTopic
	}
	if !msg.Data.Valid() {
		return ErrInvalidText
	}
	h.mu.RLock()
	if h.closed {
		h.mu.RUnlock()
		return ErrClosed
	}
	h.fanOut(msg, from)
	h.mu.RUnlock()
	h.published.Add(1)

	if h.gatewayQueue != nil {
		e := h.pending.add()
		select {
		case h.gatewayQueue <- gatewayJob{msg, from, e}:
		default:
			h.pending.done(e)
			h.drop()
		}
	}
	if h.relayQueue != nil {
		h.enqueueRelay(msg)
	}
	return nil
}

// enqueueRelay queues msg for the driver, or drops it when the queue is full.
func (h *Hub) enqueueRelay(msg Message) {
	e := h.pending.add()
	select {
	case h.relayQueue <- relayJob{msg, e}:
	default:
		h.pending.done(e)
		h.drop()
	}
}

func (h *Hub) drop() {
	h.dropped.Add(1)
	h.report(ErrQueueFull, StagePublish)
}

// fanOut delivers msg to the local subscribers of its topic, except the
// peer with id from. h.mu is held for reading.
func (h *Hub) fanOut(msg Message, from string) {
	if msg.Namespace != "" {
		h.fanOutSet(h.spaces[msg.Namespace][msg.Topic], msg.Data, from)
		return
	}
	for _, topics := range h.spaces {
		h.fanOutSet(topics[msg.Topic], msg.Data, from)
	}
}

func (h *Hub) fanOutSet(set *memberSet, d Data, from string) {
	if set == nil {
		return
	}
	for _, m := range set.list {
		if m.id != from {
			h.deliverTo(m, d)
		}
	}
}

// deliverTo hands d to one member, isolating the others from its panic.
// The first panic of a member's endpoint removes it from the hub, reports
// and closes it, on a goroutine of its own: h.mu is held for reading here,
// and OnError may call back into the Hub.
func (h *Hub) deliverTo(m *Member, d Data) {
	defer func() {
		if v := recover(); v != nil && m.broken.CompareAndSwap(false, true) {
			err := &PanicError{Value: v, Stack: debug.Stack()}
			h.failing.Add(1) // before Close's Wait: Close takes h.mu to write
			go func() {
				defer h.failing.Done()
				m.Leave()
				h.report(err, StageDelivery)
				m.closeEndpoint(StatusInternalError, "internal error")
			}()
		}
	}()
	m.ep.Deliver(d)
}

// receive is the deliver callback given to the driver: an inbound message
// goes to every local subscriber and is never relayed again.
func (h *Hub) receive(msg Message) {
	defer func() {
		if v := recover(); v != nil {
			h.report(&PanicError{Value: v, Stack: debug.Stack()}, StageDelivery)
		}
	}()
	if msg.Topic == "" {
		h.report(fmt.Errorf("inbound message: %w", ErrInvalidTopic), StageDelivery)
		return
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.closed {
		return
	}
	h.received.Add(1)
	if reserved(msg.Topic) {
		h.receivePeer(msg)
		return
	}
	h.fanOut(msg, "")
}

// inbound is Instance.Inbound: it counts one payload read off the backplane.
func (h *Hub) inbound(size int) {
	h.inboundMsgs.Add(1)
	if size > 0 {
		h.inboundBytes.Add(uint64(size))
	}
}

// relay drains the outbound queue into the driver, batching what has piled up.
func (h *Hub) relay() {
	defer h.workers.Done()
	bd, canBatch := h.driver.(BatchDriver)
	jobs := make([]relayJob, 0, h.maxBatch)
	batch := make([]Message, 0, h.maxBatch)
	for {
		select {
		case <-h.ctx.Done():
			return
		case job := <-h.relayQueue:
			jobs = append(jobs[:0], job)
		fill:
			for len(jobs) < h.maxBatch {
				select {
				case job := <-h.relayQueue:
					jobs = append(jobs, job)
				default:
					break fill
				}
			}
			batch = batch[:0]
			for _, job := range jobs {
				batch = append(batch, job.msg)
			}
			if canBatch && len(batch) > 1 {
				err := h.call(h.publishTimeout, func(ctx context.Context) error { return bd.PublishBatch(ctx, batch) })
				h.relayed.Add(h.settle(err, len(batch)))
			} else {
				for _, msg := range batch {
					err := h.call(h.publishTimeout, func(ctx context.Context) error { return h.driver.Publish(ctx, msg) })
					h.relayed.Add(h.settle(err, 1))
				}
			}
			for _, job := range jobs {
				h.pending.done(job.epoch)
			}
			clear(jobs) // let the payloads go
			clear(batch)
		}
	}
}

// settle reports the error of an outbound call for n messages and returns
// how many went out. The failure of a call that Close interrupted is not
// the backplane's.
func (h *Hub) settle(err error, n int) uint64 {
	if err == nil {
		return uint64(n)
	}
	if h.ctx.Err() == nil {
		h.report(err, StagePublish)
	}
	return 0
}

func (h *Hub) deliverToGateway() {
	defer h.workers.Done()
	for {
		select {
		case <-h.ctx.Done():
			return
		case job := <-h.gatewayQueue:
			err := h.call(h.gatewayTimeout, func(ctx context.Context) error { return h.gateway.Deliver(ctx, job.msg, job.except) })
			h.settle(err, 1)
			h.pending.done(job.epoch)
		}
	}
}

// call runs one outbound network call bounded by timeout, recovering a panic.
func (h *Hub) call(timeout time.Duration, fn func(ctx context.Context) error) (err error) {
	defer recoverInto(&err)
	ctx, cancel := context.WithTimeout(h.ctx, timeout)
	defer cancel()
	return fn(ctx)
}

// Flush waits until every message published before the call has been handed
// to the Driver and the Gateway (or dropped), or ctx is done. Messages
// published meanwhile do not hold it up. A Lambda handler calls it before it
// returns, because a frozen function runs no goroutine.
func (h *Hub) Flush(ctx context.Context) error {
	done := h.pending.flush()
	select {
	case <-done:
		return nil // checked first: after Close, nothing left to wait for is not an error
	default:
	}
	select {
	case <-done:
		return nil
	case <-h.ctx.Done():
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close closes every peer held in this process (status 1001), then closes
// the driver, returning its error. Messages still queued for relay are
// dropped: call Flush first to wait for them. Close is idempotent.
//
// One rule of ownership holds for hubs, clients and front ends: whoever makes
// a thing closes it. The code that called New closes the Hub, after every
// front end that serves it has closed (a front end never closes the Hub it
// was given); the Hub closes the driver its Sync built; and the clients the
// application passed to a driver (a Redis client, a Postgres pool) stay
// open for the application to close.
func (h *Hub) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	members := make([]*Member, 0, len(h.members))
	for _, m := range h.members {
		members = append(members, m)
	}
	h.mu.Unlock()

	for _, m := range members {
		if !m.broken.Load() { // a broken member is closed with 1011
			m.closeEndpoint(StatusGoingAway, "going away")
		}
	}
	h.failing.Wait()
	h.cancel()
	h.workers.Wait()
	var err error
	if h.driver != nil {
		if cerr := closeDriver(h.driver); cerr != nil {
			err = fmt.Errorf("edge: close driver: %w", cerr)
		}
	}
	if h.errlog != nil {
		h.errlog.Flush()
	}
	return err
}

func closeDriver(d Driver) (err error) {
	defer recoverInto(&err)
	return d.Close()
}

// report counts err and hands it to OnError, never letting OnError's own
// panic escape.
func (h *Hub) report(err error, stage Stage) {
	h.errs[stageIndex(stage)].Add(1)
	defer func() {
		if v := recover(); v != nil {
			slog.Error("edgesync: OnError panicked", "panic", v, "err", err, "stage", string(stage))
		}
	}()
	h.onError(err, ErrorInfo{Stage: stage})
}

// The stages errors are counted by, in Stats.
const (
	stageOther = iota // a Stage a driver made up
	stageSubscribe
	stagePublish
	stageDelivery
	numStages
)

func stageIndex(s Stage) int {
	switch s {
	case StageSubscribe:
		return stageSubscribe
	case StagePublish:
		return stagePublish
	case StageDelivery:
		return stageDelivery
	}
	return stageOther
}

// Stats are counters of a Hub since it started. They are exact, whatever
// the error log leaves out.
type Stats struct {
	Peers     int    // peers held in this process now
	Published uint64 // messages published on this instance
	Relayed   uint64 // messages handed to the driver without error
	Received  uint64 // messages the driver handed to the Hub, whether or not a local peer subscribes to their topic
	Dropped   uint64 // messages dropped because an outbound queue was full
	Errors    uint64 // errors reported to OnError, at every stage

	SubscribeErrors uint64 // errors reported at StageSubscribe
	PublishErrors   uint64 // errors reported at StagePublish, drops included
	DeliveryErrors  uint64 // errors reported at StageDelivery: malformed, oversized, forged inbound messages

	// BackplaneMessages and BackplaneBytes count what the driver read off
	// the backplane for this instance (Instance.Inbound), before any
	// filtering: the instance's own echo, liveness probes and the other
	// topics of a routing bucket included. In broadcast mode that is every
	// message of the cluster; in routed mode, the messages of the topics
	// the instance routes, and of the topics that share their buckets.
	// Bytes are the payloads as the backplane carries them (an envelope,
	// on a text backplane). A driver that does not count leaves them 0.
	BackplaneMessages uint64
	BackplaneBytes    uint64
}

// Stats returns the Hub's counters.
func (h *Hub) Stats() Stats {
	h.mu.RLock()
	peers := len(h.members)
	h.mu.RUnlock()
	st := Stats{
		Peers:           peers,
		Published:       h.published.Load(),
		Relayed:         h.relayed.Load(),
		Received:        h.received.Load(),
		Dropped:         h.dropped.Load(),
		SubscribeErrors: h.errs[stageSubscribe].Load(),
		PublishErrors:   h.errs[stagePublish].Load(),
		DeliveryErrors:  h.errs[stageDelivery].Load(),

		BackplaneMessages: h.inboundMsgs.Load(),
		BackplaneBytes:    h.inboundBytes.Load(),
	}
	st.Errors = st.SubscribeErrors + st.PublishErrors + st.DeliveryErrors + h.errs[stageOther].Load()
	return st
}

// NewID returns a random version 4 UUID, the form crossws uses for ids.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

func recoverInto(err *error) {
	if v := recover(); v != nil {
		*err = &PanicError{Value: v, Stack: debug.Stack()}
	}
}

// tracker counts work in flight, for Flush. Work is counted in epochs: each
// Flush closes the current epoch and waits until it, and every epoch before
// it, has no work left, so that work queued after the Flush cannot hold it
// up.
type tracker struct {
	mu  sync.Mutex
	cur *epoch
}

// epoch is the work queued between two Flush calls.
type epoch struct {
	pending   int
	sealed    bool          // a Flush has closed it: no more work joins it
	prevDone  bool          // every earlier epoch is done
	done      chan struct{} // closed when sealed, prevDone and pending is 0
	next      *epoch
	finalized bool
}

func newEpoch(prevDone bool) *epoch {
	return &epoch{prevDone: prevDone, done: make(chan struct{})}
}

// add counts one piece of work in the current epoch and returns the epoch,
// for done.
func (t *tracker) add() *epoch {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cur == nil {
		t.cur = newEpoch(true)
	}
	t.cur.pending++
	return t.cur
}

// done counts one piece of work of e as finished.
func (t *tracker) done(e *epoch) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e.pending--
	t.settle(e)
}

// flush seals the current epoch and returns a channel closed once the work
// queued so far is done.
func (t *tracker) flush() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cur == nil {
		t.cur = newEpoch(true)
	}
	e := t.cur
	e.sealed = true
	e.next = newEpoch(false)
	t.cur = e.next
	t.settle(e)
	return e.done
}

// settle closes e, and the epochs after it, as far as they are done.
func (t *tracker) settle(e *epoch) {
	for e != nil && !e.finalized && e.sealed && e.prevDone && e.pending == 0 {
		e.finalized = true
		close(e.done)
		e = e.next
		if e != nil {
			e.prevDone = true
		}
	}
}
