package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// bound bounds every wait of the client tests; nothing sleeps.
const bound = 10 * time.Second

// serveWS runs serve on the server side of each WebSocket connection made
// to the returned ws:// URL, a coder/websocket server without compression.
// serve's error, if any, fails the test once serve has returned.
func serveWS(t *testing.T, serve func(ctx context.Context, c *websocket.Conn) error) string {
	t.Helper()
	errs := make(chan error, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			errs <- err
			return
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(r.Context(), bound)
		defer cancel()
		if err := serve(ctx, c); err != nil {
			errs <- err
		}
	}))
	t.Cleanup(func() {
		srv.Close()
		close(errs)
		for err := range errs {
			t.Errorf("server: %v", err)
		}
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

func dialTest(t *testing.T, url string, readLimit int64) *wsConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	c, err := dialWS(ctx, url, readLimit)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.closeNow() })
	// A client that stops reading must not hang a test.
	_ = c.conn.SetReadDeadline(time.Now().Add(bound))
	return c
}

func TestClientMessagesBothWays(t *testing.T) {
	sizes := []int{0, 1, 125, 126, 65535, 65536, 100000} // every length encoding and its edges
	url := serveWS(t, func(ctx context.Context, c *websocket.Conn) error {
		typ, b, err := c.Read(ctx)
		if err != nil {
			return err
		}
		if typ != websocket.MessageText || string(b) != "hello" {
			return errors.New("server read " + typ.String() + " " + string(b))
		}
		for i, n := range sizes {
			typ := websocket.MessageText
			if i%2 == 1 {
				typ = websocket.MessageBinary
			}
			if err := c.Write(ctx, typ, bytes.Repeat([]byte{byte('a' + i)}, n)); err != nil {
				return err
			}
		}
		_, _, _ = c.Read(ctx) // until the client goes
		return nil
	})
	c := dialTest(t, url, 1<<20)
	if err := c.writeText([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<17)
	for i, want := range sizes {
		n, fits, err := c.readMessage(buf)
		if err != nil {
			t.Fatalf("message of %d bytes: %v", want, err)
		}
		if n != want || !fits || !bytes.Equal(buf[:n], bytes.Repeat([]byte{byte('a' + i)}, want)) {
			t.Fatalf("message of %d bytes: read %d bytes, fits %v", want, n, fits)
		}
	}
}

// A message longer than the buffer is cut to it, and the rest skipped, so
// the next message is read whole.
func TestClientMessageLongerThanTheBuffer(t *testing.T) {
	url := serveWS(t, func(ctx context.Context, c *websocket.Conn) error {
		for _, m := range []string{strings.Repeat("x", 300), "next"} {
			if err := c.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
				return err
			}
		}
		_, _, _ = c.Read(ctx)
		return nil
	})
	c := dialTest(t, url, 1<<20)
	buf := make([]byte, 64)
	if n, fits, err := c.readMessage(buf); err != nil || n != 64 || fits || string(buf[:n]) != strings.Repeat("x", 64) {
		t.Fatalf("long message: %d bytes %q, fits %v, %v; want its first 64 bytes, not fitting", n, buf[:n], fits, err)
	}
	if n, fits, err := c.readMessage(buf); err != nil || !fits || string(buf[:n]) != "next" {
		t.Fatalf("next message: %q, fits %v, %v; want \"next\"", buf[:n], fits, err)
	}
}

func TestClientFragmentedMessage(t *testing.T) {
	parts := []string{"frag-a|", "frag-b|", strings.Repeat("c", 200)}
	url := serveWS(t, func(ctx context.Context, c *websocket.Conn) error {
		w, err := c.Writer(ctx, websocket.MessageText)
		if err != nil {
			return err
		}
		for _, p := range parts {
			// Each Write is a frame of its own: coder/websocket writes
			// a frame per Write call once the message has begun.
			if _, err := w.Write([]byte(p)); err != nil {
				return err
			}
		}
		if err := w.Close(); err != nil {
			return err
		}
		_, _, _ = c.Read(ctx)
		return nil
	})
	c := dialTest(t, url, 1<<20)
	buf := make([]byte, 1024)
	n, fits, err := c.readMessage(buf)
	if want := strings.Join(parts, ""); err != nil || !fits || string(buf[:n]) != want {
		t.Fatalf("read %q, fits %v, %v; want %q", buf[:n], fits, err, want)
	}
}

// The client answers a ping while it reads.
func TestClientAnswersPings(t *testing.T) {
	url := serveWS(t, func(ctx context.Context, c *websocket.Conn) error {
		// coder/websocket reads pongs only while something reads.
		go func() { _, _, _ = c.Read(ctx) }()
		if err := c.Ping(ctx); err != nil {
			return errors.New("ping: " + err.Error())
		}
		return c.Write(ctx, websocket.MessageText, []byte("after the pong"))
	})
	c := dialTest(t, url, 1<<20)
	buf := make([]byte, 64)
	if n, _, err := c.readMessage(buf); err != nil || string(buf[:n]) != "after the pong" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
}

// The client answers a close frame with a close frame of its own, masked
// and with the same status, and then reports io.EOF. The server is written
// by hand, to see the frame.
func TestClientRepliesToClose(t *testing.T) {
	reply := make(chan []byte, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(reply)
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + websocketGUID))
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(bound))
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n")
		_, _ = brw.Write([]byte{0x80 | opClose, 5, 0x03, 0xe8, 'b', 'y', 'e'}) // 1000 "bye"
		if brw.Flush() != nil {
			return
		}
		frame := make([]byte, 8) // FIN|close, mask bit and length 2, key, status
		if _, err := io.ReadFull(brw, frame); err == nil {
			reply <- frame
		}
	}))
	defer srv.Close()
	c := dialTest(t, "ws"+strings.TrimPrefix(srv.URL, "http"), 1<<20)
	if _, _, err := c.readMessage(make([]byte, 64)); !errors.Is(err, io.EOF) {
		t.Fatalf("read of a close frame: %v, want io.EOF", err)
	}
	f, ok := <-reply
	if !ok {
		t.Fatal("no close frame came back")
	}
	status := [2]byte{f[6] ^ f[2], f[7] ^ f[3]}
	if f[0] != 0x80|opClose || f[1] != 0x80|2 || status != [2]byte{0x03, 0xe8} {
		t.Fatalf("reply % x, want a masked close frame with status 1000", f)
	}
}

func TestClientReadLimit(t *testing.T) {
	url := serveWS(t, func(ctx context.Context, c *websocket.Conn) error {
		if err := c.Write(ctx, websocket.MessageBinary, make([]byte, 2000)); err != nil {
			return err
		}
		_, _, _ = c.Read(ctx)
		return nil
	})
	c := dialTest(t, url, 1000)
	if _, _, err := c.readMessage(make([]byte, 4096)); !errors.Is(err, errTooBig) {
		t.Fatalf("read of 2,000 bytes with a limit of 1,000: %v, want errTooBig", err)
	}
}

func TestClientRefusedHandshakes(t *testing.T) {
	forbidden := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusForbidden)
	}))
	defer forbidden.Close()
	// A server that switches protocols with the wrong accept key.
	wrongKey := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Accept: c2FtZS1vbGQtYWNjZXB0LWtleQ==\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(io.Discard, brw) // until the client goes
	}))
	defer wrongKey.Close()

	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	for name, url := range map[string]string{
		"403":         "ws" + strings.TrimPrefix(forbidden.URL, "http"),
		"wrong key":   "ws" + strings.TrimPrefix(wrongKey.URL, "http"),
		"not ws://":   forbidden.URL,
		"bad URL":     "ws://[::1",
		"no listener": "ws://127.0.0.1:1",
	} {
		if c, err := dialWS(ctx, url, 1<<20); err == nil {
			c.closeNow()
			t.Errorf("%s: dial succeeded", name)
		}
	}
}

// A handshake that gets no answer ends when its context does.
func TestClientHandshakeEndsWithItsContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		// Read the request, answer nothing.
		_, _ = http.ReadRequest(bufio.NewReader(conn))
		accepted <- conn
	}()
	ctx, cancel := context.WithCancel(context.Background())
	dialed := make(chan error, 1)
	go func() {
		c, err := dialWS(ctx, "ws://"+ln.Addr().String()+"/", 1<<20)
		if err == nil {
			c.closeNow()
		}
		dialed <- err
	}()
	var conn net.Conn
	select {
	case conn = <-accepted:
	case <-time.After(bound):
		t.Fatal("the handshake never came")
	}
	if conn != nil {
		defer conn.Close()
	}
	cancel()
	select {
	case err := <-dialed:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("dial: %v, want context.Canceled", err)
		}
	case <-time.After(bound):
		t.Fatal("dial did not end with its context")
	}
}
