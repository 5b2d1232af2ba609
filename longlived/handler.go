package longlived

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/edge"
)

// Defaults that New sets on a Handler.
const (
	DefaultReadLimit       = 64 << 10 // bytes in one message a peer sends
	DefaultWriteQueueBytes = 16 << 20 // bytes waiting to be written to one peer
	DefaultPingInterval    = 30 * time.Second
	DefaultPingTimeout     = 10 * time.Second
	DefaultWriteTimeout    = 10 * time.Second
	DefaultMaxWriteLag     = 5 * time.Second

	DefaultMessagesPerSecond = 1000                   // messages a peer sends, sustained
	DefaultBytesPerSecond    = 1 << 20                // bytes a peer sends, sustained
	DefaultInboundBurst      = 250 * time.Millisecond // how far ahead of those rates it may get
	DefaultMaxMessageFrames  = 1024                   // frames in one message a peer sends
	DefaultFramesPerSecond   = 10000                  // continuation and control frames a peer sends
)

// StatusSlowConsumer is the WebSocket close status sent to a slow consumer: a
// peer that fell too far behind, for too long, in reading what it is sent
// (the package documentation gives the rule). It lies in the range
// RFC 6455 leaves to applications (4000–4999) and mirrors 1008 Policy
// Violation: the client may reconnect, and should read faster or ask for less.
const StatusSlowConsumer = 4008

var (
	// ErrSlowConsumer is reported to Hooks.Error, and returned by
	// Peer.Send, when a peer turns out to be a slow consumer: its oldest
	// message not yet written has waited longer than MaxWriteLag, or its
	// write queue would exceed WriteQueueBytes. The peer is then closed
	// with StatusSlowConsumer.
	ErrSlowConsumer = errors.New("longlived: slow consumer closed")

	// ErrMessageTooLarge is reported to Hooks.Error, and returned by
	// Peer.Send, for a message that would not fit in an empty write queue
	// (its payload and a few bytes of bookkeeping exceed WriteQueueBytes):
	// it is dropped, and the peer stays connected.
	ErrMessageTooLarge = errors.New("longlived: message larger than the write queue, dropped")

	// ErrPingTimeout is reported to Hooks.Error, wrapped with the ping's
	// own error, when a peer does not answer a ping within PingTimeout.
	ErrPingTimeout = errors.New("longlived: no pong within the ping timeout")

	// ErrPeerClosed is returned by Peer.Send once the peer is closing or
	// closed.
	ErrPeerClosed = errors.New("longlived: peer closed")
)

// Handler hosts WebSocket peers in memory, joined to a Hub. Create it with
// New; set its fields before it serves its first request. A Handler is safe
// for concurrent use.
type Handler struct {
	// Hub indexes the peers' subscriptions and delivers what they publish.
	Hub *edge.Hub
	// Hooks are the application.
	Hooks edge.Hooks

	// OriginPatterns lists the hosts whose pages may connect besides the
	// request's own host (same origin), as websocket.AcceptOptions
	// describes them, for example "app.example.com" or "*.example.com".
	OriginPatterns []string
	// ReadLimit is the largest message, in bytes, a peer may send: a
	// longer one closes it with 1009 Message Too Big. 0 means
	// DefaultReadLimit and a negative value means no limit.
	ReadLimit int64
	// WriteQueueBytes caps the bytes queued for one peer (payloads plus a
	// few bytes of bookkeeping each): a peer whose queue would grow past
	// it is a slow consumer. It bounds the memory one peer can hold. 0
	// means DefaultWriteQueueBytes.
	WriteQueueBytes int
	// MaxWriteLag is how far behind a peer may fall: a peer whose oldest
	// message not yet written has waited longer than MaxWriteLag when
	// another one is queued is a slow consumer. 0 means
	// DefaultMaxWriteLag.
	MaxWriteLag time.Duration
	// PingInterval is how often a peer is pinged. 0 disables pings.
	PingInterval time.Duration
	// PingTimeout is how long a ping waits for its pong. 0 means
	// DefaultPingTimeout.
	PingTimeout time.Duration
	// WriteTimeout bounds the write of one message. A peer whose write
	// times out is dropped. 0 means DefaultWriteTimeout.
	WriteTimeout time.Duration

	// MessagesPerSecond is how many messages a second one peer may send,
	// sustained. A peer that sends faster is slowed down, not closed: its
	// read loop waits before it hands on a message that the peer's budget
	// does not cover, and reads nothing meanwhile, so that TCP flow
	// control holds the peer back. Nothing is dropped and other peers are
	// not affected. 0 means DefaultMessagesPerSecond and a negative value
	// means no limit.
	MessagesPerSecond int
	// BytesPerSecond is how many bytes of messages a second one peer may
	// send, sustained; it is enforced like MessagesPerSecond. A message
	// larger than the burst waits until the budget has paid for it.
	// 0 means DefaultBytesPerSecond and a negative value means no limit.
	BytesPerSecond int
	// InboundBurst is how far ahead of its rates a peer may get after a
	// quiet spell: MessagesPerSecond × InboundBurst messages and
	// BytesPerSecond × InboundBurst bytes pass without waiting. 0 means
	// DefaultInboundBurst.
	InboundBurst time.Duration
	// MaxMessageFrames is the most frames a message from a peer may be
	// made of. A peer that sends more is reported to Hooks.Error with
	// ErrTooManyFrames and closed with 1008 Policy Violation. 0 means
	// DefaultMaxMessageFrames and a negative value means no limit.
	MaxMessageFrames int
	// FramesPerSecond is how many frames a second one peer may send
	// besides the first frame of each message, which MessagesPerSecond
	// paces: continuation frames and control frames (pings, pongs), with
	// a burst of as many. A peer that sends more is closed as for
	// MaxMessageFrames. It bounds the work of frames that carry little or
	// no payload, which ReadLimit and BytesPerSecond do not count. 0 means
	// DefaultFramesPerSecond and a negative value means no limit.
	FramesPerSecond int

	// Logger is where peer errors go when Hooks.Error is nil, through an
	// edge.ErrorLog: the first error of a kind at once, then one line per
	// interval with the count of its repeats. nil means slog.Default().
	Logger *slog.Logger

	hooksOnce sync.Once
	hooks     *edge.HookRunner
	batches   sync.Pool // of *[]byte: the buffers of the peers' batches of writes

	mu      sync.Mutex
	peers   map[*peer]struct{}
	active  int           // upgrades admitted whose peer has not ended
	closing bool          // Close has begun
	idle    chan struct{} // closed once closing and active is 0
}

// New returns a Handler for hub and hooks, with every limit set to its
// default.
func New(hub *edge.Hub, hooks edge.Hooks) *Handler {
	return &Handler{
		Hub:             hub,
		Hooks:           hooks,
		ReadLimit:       DefaultReadLimit,
		WriteQueueBytes: DefaultWriteQueueBytes,
		PingInterval:    DefaultPingInterval,
		PingTimeout:     DefaultPingTimeout,
		WriteTimeout:    DefaultWriteTimeout,
		MaxWriteLag:     DefaultMaxWriteLag,

		MessagesPerSecond: DefaultMessagesPerSecond,
		BytesPerSecond:    DefaultBytesPerSecond,
		InboundBurst:      DefaultInboundBurst,
		MaxMessageFrames:  DefaultMaxMessageFrames,
		FramesPerSecond:   DefaultFramesPerSecond,
	}
}

// limit resolves a limit field: 0 means def, a negative value no limit (0).
func limit(v, def int) int {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

func (h *Handler) messagesPerSecond() int {
	return limit(h.MessagesPerSecond, DefaultMessagesPerSecond)
}

func (h *Handler) bytesPerSecond() int { return limit(h.BytesPerSecond, DefaultBytesPerSecond) }

func (h *Handler) maxMessageFrames() int {
	return limit(h.MaxMessageFrames, DefaultMaxMessageFrames)
}

func (h *Handler) framesPerSecond() int { return limit(h.FramesPerSecond, DefaultFramesPerSecond) }

func (h *Handler) inboundBurst() time.Duration {
	if h.InboundBurst <= 0 {
		return DefaultInboundBurst
	}
	return h.InboundBurst
}

func (h *Handler) readLimit() int64 {
	switch {
	case h.ReadLimit == 0:
		return DefaultReadLimit
	case h.ReadLimit < 0:
		return -1
	}
	return h.ReadLimit
}

func (h *Handler) writeQueueBytes() int {
	if h.WriteQueueBytes <= 0 {
		return DefaultWriteQueueBytes
	}
	return h.WriteQueueBytes
}

func (h *Handler) maxWriteLag() time.Duration {
	if h.MaxWriteLag <= 0 {
		return DefaultMaxWriteLag
	}
	return h.MaxWriteLag
}

func (h *Handler) pingTimeout() time.Duration {
	if h.PingTimeout <= 0 {
		return DefaultPingTimeout
	}
	return h.PingTimeout
}

func (h *Handler) writeTimeout() time.Duration {
	if h.WriteTimeout <= 0 {
		return DefaultWriteTimeout
	}
	return h.WriteTimeout
}

// runner returns the HookRunner that runs h.Hooks: the same panic guard,
// error reporting and default namespace as every front end.
func (h *Handler) runner() *edge.HookRunner {
	h.hooksOnce.Do(func() { h.hooks = &edge.HookRunner{Hooks: h.Hooks, Logger: h.Logger, Name: "longlived"} })
	return h.hooks
}

// ServeHTTP upgrades the request to a WebSocket connection, joins the peer
// to the Hub and returns, leaving the peer to a goroutine of its own until
// the connection ends: net/http's goroutine, request and connection state
// are not kept for the life of the connection. Handler.Close waits for
// those goroutines. Once Close has begun ServeHTTP answers 503 Service
// Unavailable.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.Hub == nil {
		http.Error(w, "longlived: Handler has no Hub", http.StatusInternalServerError)
		return
	}
	if !h.enter() {
		http.Error(w, "server closing", http.StatusServiceUnavailable)
		return
	}
	served := false
	defer func() {
		if !served {
			h.leave()
		}
	}()

	accept, err := h.runner().Upgrade(r)
	if err != nil {
		refuse(w, err)
		return
	}
	namespace := accept.Namespace
	var subprotocols []string
	for key, values := range accept.Header {
		if strings.EqualFold(key, "Sec-WebSocket-Protocol") {
			subprotocols = headerTokens(values)
			continue
		}
		for _, v := range values {
			w.Header().Add(key, v)
		}
	}

	rec := &hijackRecorder{ResponseWriter: w, maxFrames: h.maxMessageFrames(), framesPerSecond: h.framesPerSecond(), pool: &h.batches}
	conn, err := websocket.Accept(rec, r, &websocket.AcceptOptions{
		Subprotocols:   subprotocols,
		OriginPatterns: h.OriginPatterns,
	})
	if err != nil {
		return // Accept has answered the request
	}
	conn.SetReadLimit(h.readLimit())
	rec.shrinkBuffers()

	p := &peer{h: h, id: edge.NewID(), namespace: namespace, conn: conn, raw: rec.conn, out: rec.batch, start: time.Now()}
	p.frames, p.in = rec.conn, newInbound(h)
	if len(accept.Attrs) > 0 {
		p.attrs = maps.Clone(accept.Attrs)
	}
	member, err := h.Hub.Join(p.id, namespace, p)
	if err != nil {
		// The Hub was closed under the Handler: the server is going away.
		_ = conn.Close(websocket.StatusGoingAway, "going away")
		return
	}
	member.SetAttrs(p.attrs) // for Hub.Presence
	p.member = member
	h.track(p)
	served = true
	go func() {
		defer h.leave()
		p.serve()
	}()
}

// refuse answers a refused upgrade: a *edge.Reject with its own response,
// any other error with 403 Forbidden.
func refuse(w http.ResponseWriter, err error) {
	status, text := http.StatusForbidden, http.StatusText(http.StatusForbidden)
	var rej *edge.Reject
	if errors.As(err, &rej) {
		status, text = rej.StatusCode(), rej.Text()
		for key, values := range rej.Header {
			for _, v := range values {
				w.Header().Add(key, v)
			}
		}
	}
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, text)
}

// headerTokens splits comma-separated header values into trimmed tokens.
func headerTokens(values []string) []string {
	var tokens []string
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				tokens = append(tokens, t)
			}
		}
	}
	return tokens
}

// enter admits an upgrade unless Close has begun.
func (h *Handler) enter() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.active++
	return true
}

// track records a connected peer, closing it at once if Close has begun
// since the peer was admitted.
func (h *Handler) track(p *peer) {
	h.mu.Lock()
	if h.peers == nil {
		h.peers = make(map[*peer]struct{})
	}
	h.peers[p] = struct{}{}
	closing := h.closing
	h.mu.Unlock()
	if closing {
		_ = p.Close(statusGoingAway, "going away")
	}
}

// leave ends an upgrade admitted by enter: refused, failed, or its peer
// served to the end.
func (h *Handler) leave() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.active--
	if h.closing && h.active == 0 {
		close(h.idle)
	}
}

func (h *Handler) untrack(p *peer) {
	h.mu.Lock()
	delete(h.peers, p)
	h.mu.Unlock()
}

func (h *Handler) snapshot() []*peer {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Collect(maps.Keys(h.peers))
}

// Close sends every peer 1001 Going Away and waits until their connections
// have ended or ctx is done, when it drops the connections that remain
// without waiting any longer. Upgrades that arrive once Close has begun are
// answered 503 Service Unavailable.
//
// Close does not close the Hub: whoever made the Hub closes it, after every
// front end that uses it has closed (one Hub may serve several front ends).
// Close returns ctx's error if it had to drop connections. Calling Close
// again waits again.
func (h *Handler) Close(ctx context.Context) error {
	h.mu.Lock()
	if !h.closing {
		h.closing = true
		h.idle = make(chan struct{})
		if h.active == 0 {
			close(h.idle)
		}
	}
	idle := h.idle
	h.mu.Unlock()

	for _, p := range h.snapshot() {
		_ = p.Close(statusGoingAway, "going away")
	}
	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		for _, p := range h.snapshot() {
			p.drop()
		}
		err = fmt.Errorf("longlived: close: peers still connected: %w", ctx.Err())
	}
	h.runner().Flush()
	return err
}

// hijackRecorder keeps the network connection that websocket.Accept
// hijacks, so that a peer can be dropped at once whatever the state of its
// WebSocket close handshake. It hands the library a frameConn, which sees
// every byte the library reads.
type hijackRecorder struct {
	http.ResponseWriter
	maxFrames, framesPerSecond int
	pool                       *sync.Pool // the Handler's batch buffers
	conn                       *frameConn
	batch                      *batchWriter
	brw                        *bufio.ReadWriter // until shrinkBuffers
}

// Hijack implements http.Hijacker.
func (w *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	fc := newFrameConn(conn, w.maxFrames, w.framesPerSecond)
	// The server may have read the first frames along with the request:
	// they are read through fc too, before the connection.
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		fc.pending = bytes.Clone(b)
	}
	if brw.Writer.Buffered() > 0 { // net/http flushes the response first
		if err := brw.Writer.Flush(); err != nil {
			_ = conn.Close()
			return nil, nil, err
		}
	}
	w.batch = &batchWriter{conn: conn, pool: w.pool}
	brw.Reader.Reset(fc)
	brw.Writer.Reset(w.batch)
	w.brw = brw
	w.conn = fc
	return fc, brw, nil
}

// shrinkBuffers replaces, in place, the reader and writer that the library
// has from the hijack with smaller ones: net/http makes them 4 KiB each, and
// the library holds the pointers, so replacing those would free nothing.
// The writer's frames are gathered by the batchWriter, and the reader needs
// little for an idle peer (see readBufferSize): so an idle peer holds 1.25
// KiB of buffers instead of 8. It runs before the library has read or
// written anything.
func (w *hijackRecorder) shrinkBuffers() {
	if w.brw == nil || w.brw.Reader.Buffered() > 0 || w.brw.Writer.Buffered() > 0 {
		return
	}
	*w.brw.Reader = *bufio.NewReaderSize(w.conn, readBufferSize)
	*w.brw.Writer = *bufio.NewWriterSize(w.batch, writeBufferSize)
	w.brw = nil
}

// Unwrap returns the ResponseWriter it wraps, for http.ResponseController.
func (w *hijackRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }
