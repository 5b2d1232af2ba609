package emulator

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-lambda-go/events"
	"github.com/coder/websocket"
)

// Close codes and reasons the Emulator uses.
const (
	closeNormal      = websocket.StatusNormalClosure
	closeGoingAway   = websocket.StatusGoingAway
	closeUnsupported = websocket.StatusUnsupportedData
	closeTooBig      = websocket.StatusMessageTooBig
	closeAbnormal    = websocket.StatusAbnormalClosure

	reasonGoingAway   = "Going away"
	reasonDeleted     = "Connection Closed Normally"
	reasonTooBig      = "Message too big"
	reasonFrameTooBig = "Frame size limit exceeded"
	reasonBinary      = "Binary frames are not supported"
)

// writeTimeout bounds a write to a client; a client that does not read for
// that long is dropped.
const writeTimeout = 10 * time.Second

// conn is one client connection.
type conn struct {
	e           *Emulator
	id          string
	sourceIP    string
	userAgent   string
	domainName  string
	connectedAt time.Time
	authorizer  map[string]any // the authorizer's context, nil without one

	ready      chan struct{} // closed once the handshake is over; ws is set if it succeeded
	ws         *websocket.Conn
	lastActive atomic.Int64 // unix nanoseconds
	activity   chan struct{}
	tooBig     chan struct{} // closed by the frame guard

	closeOnce   sync.Once
	closeDone   chan struct{} // closed when a close the emulator began is over
	closeCode   websocket.StatusCode
	closeReason string
	byServer    atomic.Bool
}

// serveConnect handles an upgrade request at /{stage}: it invokes $connect
// before accepting the WebSocket handshake.
func (e *Emulator) serveConnect(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || !headerHasToken(r.Header, "Connection", "upgrade") ||
		!headerHasToken(r.Header, "Upgrade", "websocket") {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		http.Error(w, "426 Upgrade Required: this is a WebSocket endpoint", http.StatusUpgradeRequired)
		return
	}
	if !e.begin() {
		http.Error(w, "503 Service Unavailable: the emulator is closed", http.StatusServiceUnavailable)
		return
	}
	defer e.wg.Done()

	var authorizer map[string]any
	if e.opts.Authorizer != nil {
		auth, status, err := e.authorize(r)
		if err != nil {
			if status == http.StatusInternalServerError {
				e.log.Error("emulator: authorizer failed", "err", err)
			} else {
				e.log.Info("emulator: $connect refused by the authorizer", "status", status, "err", err)
			}
			refuse(w, status)
			return
		}
		authorizer = auth
	}

	now := time.Now()
	c := &conn{
		e:           e,
		id:          newID(),
		sourceIP:    remoteIP(r),
		userAgent:   r.UserAgent(),
		domainName:  r.Host,
		connectedAt: now,
		authorizer:  authorizer,
		activity:    make(chan struct{}, 1),
		tooBig:      make(chan struct{}),
		closeDone:   make(chan struct{}),
		ready:       make(chan struct{}),
	}
	c.lastActive.Store(now.UnixNano())
	ev := c.connectEvent(r, now)
	resp, err := e.invoke(ev)
	if err == nil && (resp.StatusCode < 100 || resp.StatusCode > 599) {
		err = fmt.Errorf("malformed integration response: statusCode %d", resp.StatusCode)
	}
	if err != nil {
		e.log.Error("emulator: $connect integration failed", "connection", c.id, "err", err)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Amzn-ErrorType", "InternalServerErrorException")
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, `{"message": "Internal server error"}`)
		return
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e.log.Info("emulator: $connect refused", "connection", c.id, "status", resp.StatusCode)
		copyHeaders(w.Header(), resp, false)
		body, err := responseBody(resp)
		if err != nil {
			body = []byte(resp.Body)
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(body)
		return
	}

	copyHeaders(w.Header(), resp, true)
	// The connection is registered as the handshake's 101 is written, so
	// that it is postable as soon as the client is connected.
	registered := false
	guard := &guardWriter{ResponseWriter: w, tooBig: c.tooBig, onSwitch: func() {
		e.mu.Lock()
		if !e.closed {
			e.conns[c.id] = c
			registered = true
		}
		e.mu.Unlock()
	}}
	ws, err := websocket.Accept(guard, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		e.mu.Lock()
		delete(e.conns, c.id)
		e.mu.Unlock()
		close(c.ready)
		e.log.Warn("emulator: handshake failed after $connect", "connection", c.id, "err", err)
		c.disconnect(int(closeAbnormal), "")
		return
	}
	ws.SetReadLimit(-1) // the emulator enforces MaxMessageSize itself
	c.ws = ws
	close(c.ready)
	if !registered {
		c.shutdown(closeGoingAway, reasonGoingAway) // the emulator closed meanwhile
	}
	e.log.Info("emulator: connected", "connection", c.id, "source", c.sourceIP)
	c.run()
}

// run reads the connection's messages until it ends, then invokes
// $disconnect.
func (c *conn) run() {
	done := make(chan struct{})
	c.e.wg.Add(1)
	go func() {
		defer c.e.wg.Done()
		c.supervise(done)
	}()
	c.read() // which ends having called shutdown or ended
	close(done)
	if c.byServer.Load() {
		<-c.closeDone
	} else {
		_ = c.ws.CloseNow()
	}

	c.e.mu.Lock()
	delete(c.e.conns, c.id)
	c.e.mu.Unlock()
	c.disconnect(int(c.closeCode), c.closeReason)
}

// read is the connection's read loop.
func (c *conn) read() {
	ctx := context.Background()
	for {
		typ, r, err := c.ws.Reader(ctx)
		if err != nil {
			c.ended(err)
			return
		}
		if typ == websocket.MessageBinary {
			c.shutdown(closeUnsupported, reasonBinary)
			return
		}
		data, err := io.ReadAll(io.LimitReader(r, MaxMessageSize+1))
		if err != nil {
			c.ended(err)
			return
		}
		if len(data) > MaxMessageSize {
			c.shutdown(closeTooBig, reasonTooBig)
			return
		}
		if c.byServer.Load() {
			continue // closing: API Gateway routes nothing more
		}
		c.touch()
		c.e.wg.Add(1)
		go func() {
			defer c.e.wg.Done()
			c.message(data)
		}()
	}
}

// ended records why the read loop ended, unless the emulator closed the
// connection first.
func (c *conn) ended(err error) {
	code, reason := closeAbnormal, ""
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		code, reason = ce.Code, ce.Reason
	}
	c.closeOnce.Do(func() {
		c.closeCode, c.closeReason = code, reason
	})
}

// supervise enforces the idle timeout, the maximum duration and the frame
// size limit until done is closed.
func (c *conn) supervise(done <-chan struct{}) {
	idle := time.NewTimer(c.e.opts.IdleTimeout)
	defer idle.Stop()
	maxd := time.NewTimer(c.e.opts.MaxDuration)
	defer maxd.Stop()
	for {
		select {
		case <-done:
			return
		case <-c.activity:
			idle.Reset(c.e.opts.IdleTimeout)
		case <-idle.C:
			c.shutdown(closeGoingAway, reasonGoingAway)
			return
		case <-maxd.C:
			c.shutdown(closeGoingAway, reasonGoingAway)
			return
		case <-c.tooBig:
			c.shutdown(closeTooBig, reasonFrameTooBig)
			return
		}
	}
}

// touch records activity on the connection, resetting its idle timeout.
func (c *conn) touch() {
	c.lastActive.Store(time.Now().UnixNano())
	select {
	case c.activity <- struct{}{}:
	default:
	}
}

// shutdown closes the connection with code and reason, unless it is already
// closing. The close handshake runs in its own goroutine.
func (c *conn) shutdown(code websocket.StatusCode, reason string) {
	c.closeOnce.Do(func() {
		c.closeCode, c.closeReason = code, reason
		c.byServer.Store(true)
		c.e.wg.Add(1)
		go func() {
			defer c.e.wg.Done()
			defer close(c.closeDone)
			<-c.ready
			if c.ws != nil {
				_ = c.ws.Close(code, reason)
			}
		}()
	})
}

// message routes one message and invokes its route.
func (c *conn) message(data []byte) {
	route := c.e.selectRoute(data)
	ev := c.messageEvent(route, string(data), time.Now())
	rid := ev.RequestContext.RequestID
	resp, err := c.e.invoke(ev)
	if err != nil {
		c.e.log.Error("emulator: integration failed", "connection", c.id, "route", route, "request", rid, "err", err)
		frame := fmt.Sprintf(`{"message": "Internal server error", "connectionId":%s, "requestId":%s}`,
			strconv.Quote(c.id), strconv.Quote(rid))
		_ = c.write([]byte(frame), websocket.MessageText)
		return
	}
	if resp.Body == "" {
		return
	}
	if !slices.Contains(c.e.opts.RouteResponses, route) {
		c.e.log.Debug("emulator: response body dropped: the route has no route response",
			"connection", c.id, "route", route, "request", rid, "status", resp.StatusCode, "body", resp.Body)
		return
	}
	body, err := responseBody(resp)
	if err != nil {
		c.e.log.Error("emulator: malformed integration response", "connection", c.id, "route", route, "request", rid, "err", err)
		return
	}
	typ := websocket.MessageText
	if resp.IsBase64Encoded {
		typ = websocket.MessageBinary
	}
	_ = c.write(body, typ)
}

// write sends one message to the client. A client that does not take it
// within writeTimeout is dropped.
func (c *conn) write(data []byte, typ websocket.MessageType) error {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	if err := c.ws.Write(ctx, typ, data); err != nil {
		return err
	}
	c.touch()
	return nil
}

// post delivers a PostToConnection body: a text frame when it is valid
// UTF-8, a binary frame otherwise.
func (c *conn) post(data []byte) error {
	typ := websocket.MessageText
	if !utf8.Valid(data) {
		typ = websocket.MessageBinary
	}
	return c.write(data, typ)
}

// disconnect invokes $disconnect.
func (c *conn) disconnect(code int, reason string) {
	ev := c.disconnectEvent(code, reason, time.Now())
	if _, err := c.e.invoke(ev); err != nil {
		c.e.log.Error("emulator: $disconnect integration failed", "connection", c.id, "err", err)
	}
	c.e.log.Info("emulator: disconnected", "connection", c.id, "code", code, "reason", reason)
}

// responseBody returns a proxy response's body, decoded if base64.
func responseBody(resp events.APIGatewayProxyResponse) ([]byte, error) {
	if !resp.IsBase64Encoded {
		return []byte(resp.Body), nil
	}
	return base64.StdEncoding.DecodeString(resp.Body)
}

// handshakeHeaders are the response headers the WebSocket handshake owns.
var handshakeHeaders = map[string]bool{
	"Upgrade": true, "Connection": true, "Sec-Websocket-Accept": true,
	"Sec-Websocket-Extensions": true, "Content-Length": true, "Transfer-Encoding": true,
}

// copyHeaders adds the integration response's headers to h. On an accepted
// handshake the handshake's own headers are left alone.
func copyHeaders(h http.Header, resp events.APIGatewayProxyResponse, handshake bool) {
	add := func(k, v string) {
		k = http.CanonicalHeaderKey(k)
		if handshake && handshakeHeaders[k] || !handshake && (k == "Content-Length" || k == "Transfer-Encoding") {
			return
		}
		h.Add(k, v)
	}
	for k, vs := range resp.MultiValueHeaders {
		for _, v := range vs {
			add(k, v)
		}
	}
	for k, v := range resp.Headers {
		if _, dup := resp.MultiValueHeaders[k]; !dup {
			add(k, v)
		}
	}
}

// headerHasToken reports whether the comma-separated header name contains
// token, case-insensitively.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// guardWriter hands coder/websocket a hijacked connection whose reads pass
// through a frameGuard.
type guardWriter struct {
	http.ResponseWriter
	tooBig   chan struct{}
	onSwitch func() // called before the 101 Switching Protocols is written
}

// WriteHeader implements http.ResponseWriter.
func (g *guardWriter) WriteHeader(code int) {
	if code == http.StatusSwitchingProtocols && g.onSwitch != nil {
		g.onSwitch()
	}
	g.ResponseWriter.WriteHeader(code)
}

// Hijack implements http.Hijacker.
func (g *guardWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(g.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	gc := &guardConn{Conn: nc, g: &frameGuard{r: brw.Reader, tooBig: g.tooBig}}
	return gc, bufio.NewReadWriter(bufio.NewReader(gc), brw.Writer), nil
}

// guardConn is a net.Conn whose reads pass through a frameGuard.
type guardConn struct {
	net.Conn
	g *frameGuard
}

func (c *guardConn) Read(p []byte) (int, error) { return c.g.Read(p) }

// frameGuard watches the frames a client sends and enforces MaxFrameSize,
// which coder/websocket cannot see: the first data frame over the limit is
// withheld, and so is every data frame after it, while control frames (the
// client's answer to the close) still pass; tooBig is closed so that the
// connection is closed with 1009.
type frameGuard struct {
	r       io.Reader
	tooBig  chan struct{}
	pending []byte // a frame header to hand on
	left    uint64 // payload bytes of the current frame still to come
	drop    bool   // whether the current frame is withheld
	tripped bool
	hdr     [14]byte
}

func (g *frameGuard) Read(p []byte) (int, error) {
	for {
		if len(g.pending) > 0 {
			n := copy(p, g.pending)
			g.pending = g.pending[n:]
			return n, nil
		}
		if g.left > 0 {
			if g.drop {
				n, err := io.CopyN(io.Discard, g.r, int64(min(g.left, 1<<62)))
				g.left -= uint64(n)
				if err != nil {
					return 0, err
				}
				continue
			}
			if uint64(len(p)) > g.left {
				p = p[:g.left]
			}
			n, err := g.r.Read(p)
			g.left -= uint64(n)
			return n, err
		}
		if len(p) == 0 {
			return 0, nil
		}
		if err := g.readHeader(); err != nil {
			return 0, err
		}
	}
}

// readHeader reads the next frame header and decides whether to hand it on.
func (g *frameGuard) readHeader() error {
	h := g.hdr[:2]
	if _, err := io.ReadFull(g.r, h); err != nil {
		return err
	}
	n := 2
	switch h[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if h[1]&0x80 != 0 {
		n += 4 // masking key
	}
	if _, err := io.ReadFull(g.r, g.hdr[2:n]); err != nil {
		return err
	}
	var length uint64
	switch l := g.hdr[1] & 0x7f; l {
	case 126:
		length = uint64(g.hdr[2])<<8 | uint64(g.hdr[3])
	case 127:
		for _, b := range g.hdr[2:10] {
			length = length<<8 | uint64(b)
		}
	default:
		length = uint64(l)
	}
	control := g.hdr[0]&0x08 != 0
	if !control && (g.tripped || length > MaxFrameSize) {
		if !g.tripped {
			g.tripped = true
			close(g.tooBig)
		}
		g.drop, g.left = true, length
		return nil
	}
	g.drop, g.left = false, length
	g.pending = append([]byte(nil), g.hdr[:n]...)
	return nil
}
