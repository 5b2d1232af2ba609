// Package longlived hosts WebSocket peers in the memory of a long-lived
// server process: a Handler is an http.Handler that accepts WebSocket
// connections (github.com/coder/websocket), joins each one to an edge.Hub and
// runs the application's edge.Hooks for it.
//
// # Connection lifecycle
//
// ServeHTTP calls Hooks.Upgrade first. An error refuses the connection: a
// *edge.Reject becomes the HTTP response, any other error is answered 403
// Forbidden. Then the handshake is accepted, with coder/websocket's origin
// check (same origin only, unless Handler.OriginPatterns allows more), and
// the peer joins the Hub in its namespace: Accept.Namespace, or by default the
// request's URL path. Hooks.Open runs once it has joined, Hooks.Message for
// every message it sends, in order, and Hooks.Close exactly once when the
// connection has ended, after every other hook call for the peer.
//
// ServeHTTP returns once the peer has joined: the connection is served on a
// goroutine of its own, so that an idle peer does not also keep net/http's
// serving goroutine and request (about 7 KiB). Middleware around the Handler
// therefore sees the upgrade, not the life of the connection, and the
// request's context ends when ServeHTTP returns. Handler.Close waits until
// every peer's goroutines have returned; Hooks.Close tells when one peer has
// ended.
//
// Open, Message and Close run on the connection's read goroutine: while a
// hook runs, the peer's next message and its pongs wait, so a hook that blocks
// for longer than PingTimeout gets its peer closed as unresponsive. Error may
// run on any goroutine, concurrently with Message.
//
// # Reading and its limits
//
// A message reaches Hooks.Message only once its final frame has arrived
// whole. A connection that ends inside a message (a fragment without its
// final frame, or a frame shorter than its header announced) delivers
// nothing of it: the peer ends as a dropped connection, and Hooks.Close
// receives 1006.
//
// What one peer sends is paced by two token buckets, MessagesPerSecond and
// BytesPerSecond, which a quiet peer may get ahead of by InboundBurst (by
// default 1,000 messages and 1 MiB a second, 250 ms ahead). A peer that
// sends faster is slowed down, not closed: once it has read a message its
// budget does not cover, the read loop waits until the budget has refilled
// before it hands the message on and reads the next. Meanwhile nothing is
// read from the connection, so TCP flow control holds the client back: its
// writes block, or a browser's WebSocket.bufferedAmount grows. Nothing is
// dropped, and other peers, on this instance and others, are not slowed.
// Hooks.Message never sees more from a peer than the burst plus the rates
// times the time since it connected. The pongs of a peer that keeps sending
// faster queue behind its own backlog; a ping that gets no pong within
// PingTimeout while the read loop took in messages of the peer does not
// count against it, so a peer that floods is paced for as long as it floods,
// not dropped. A peer whose backlog is read, and that still does not answer,
// is dropped as unresponsive (ErrPingTimeout, then 1006).
//
// Frames are bounded too, since ReadLimit and BytesPerSecond count payload
// bytes only and empty frames cost none: a message of more than
// MaxMessageFrames frames, or more than FramesPerSecond frames in a second
// besides the first of each message (continuation and control frames), or
// more than 50 pings a second (each costs a pong written back), has the
// peer reported to Hooks.Error with ErrTooManyFrames and closed with 1008
// Policy Violation.
//
// A message that the read loop holds back for the budget is dropped if the
// peer closes meanwhile: a peer that is closed, kicked or evicted has nothing
// more handed to Hooks.Message. The close handshake, in which the library
// reads what the client still sends until its close frame, lasts 5 seconds
// at most.
//
// # Writing
//
// Each peer has a write queue and at most one writer goroutine, started when
// there is something to write. Deliveries from the Hub and Peer.Send only
// append to the queue: they never block.
//
// The writer writes in batches: every message queued when it looks, up to
// 32 KiB of them, goes out in one write system call, each message still in
// a frame of its own, byte for byte the frames coder/websocket makes. A peer
// that keeps up gets one system call per message; one that falls behind by
// a few messages, as every peer does in a burst fanned out to many, gets one
// for all of them, so fan-out costs far fewer system calls than
// deliveries. Pongs and pings written meanwhile go out in order with the
// batch, at a frame boundary; a close frame goes out at once, after the
// frames before it. A connection that refuses
// write deadlines gets its messages written one at a time.
//
// An idle peer holds little: its goroutine (the one serving the request,
// which reads), a 1 KiB read buffer and a 256-byte write buffer. A batch's
// buffer comes from a pool shared by the Handler's peers, only while the
// batch is written, and the queue's array only while there is something to
// write.
//
// # Slow consumers
//
// A peer that reads more slowly than messages are queued for it falls
// behind. Falling behind for a moment is normal and costs nothing: a burst of
// messages, a pause of the process, other work on the processor. A peer is a
// slow consumer when a message is queued for it while
//
//   - the oldest of its messages not yet written has waited longer than
//     Handler.MaxWriteLag (default 5 s): it has been behind for that long; or
//   - the message would take its queue past Handler.WriteQueueBytes (default
//     16 MiB, payloads plus a few bytes each), the bound on the memory one
//     peer can hold.
//
// A slow consumer is evicted at once, in the call that queued the message,
// which does not block: its queue is dropped, it leaves the Hub so that
// publishers no longer visit it, it is reported to Hooks.Error with
// ErrSlowConsumer, and it is closed with StatusSlowConsumer (4008). The
// write in progress, if any, and the close frame get WriteTimeout from the
// eviction; a connection that takes neither in that time is dropped without
// a close frame, with a TCP reset that frees its socket buffers at once.
// Hooks.Close receives StatusSlowConsumer either way. The peers that keep up
// never notice: a slow consumer costs them its share of the processor, no
// more.
//
// Before its queue grows, a client that does not read takes what its
// connection's kernel buffers hold: about 4 MB on Linux by default
// (net.ipv4.tcp_wmem), written at the speed of memory. Messages fanned out
// by the Hub share their payload, so the queues hold far less memory than
// the sum of their bounds: WriteQueueBytes counts every queue as if it
// alone held its messages.
//
// Peer.Send goes through the same queue: it returns ErrSlowConsumer when it
// finds the peer slow, ErrPeerClosed once the peer is closing,
// ErrMessageTooLarge for a message that could never fit in the queue, which
// is dropped while the peer stays connected, and an error for text that is
// not valid UTF-8.
//
// # Closing
//
// Peer.Close returns at once: the writer sends what is already queued, then
// the close frame, and waits (up to the five seconds coder/websocket allows)
// for the client's answer. Statuses the handler chooses itself:
//
//   - 1001 Going Away: Handler.Close, or the Hub was closed.
//   - 1007 Invalid Frame Payload Data: a text message that is not UTF-8.
//   - 1008 Policy Violation: more frames than MaxMessageFrames or
//     FramesPerSecond allow.
//   - 1009 Message Too Big: a message longer than ReadLimit.
//   - 1011 Internal Error: a hook panicked.
//   - StatusSlowConsumer (4008): a slow consumer (see above).
//
// A peer that does not answer a ping within PingTimeout, or whose write fails,
// is dropped without a close frame: it is reported to Hooks.Error and
// Hooks.Close receives 1006 (abnormal closure). A dropped connection is
// reset (TCP RST), so that what the client has not read is discarded at
// once rather than held by the kernel for a client that may never read it.
//
// A panic in a hook is recovered, reported to Hooks.Error as an
// *edge.PanicError and closes only that peer, with 1011. A panic in
// Hooks.Upgrade is answered 500 and logged with log/slog, since there is no
// peer yet; a panic in Hooks.Error is logged with log/slog. A panic in what
// reads a peer's connection (the net.Conn the server hijacked, or the
// library's reader) drops only that connection: it is reported to
// Hooks.Error as an *edge.PanicError, and Hooks.Close receives 1006.
package longlived
