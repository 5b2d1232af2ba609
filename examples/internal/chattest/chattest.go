// Package chattest is a WebSocket client of the chat room for tests: it
// dials a room, says hello, sends messages and reads what the room sends
// back, failing the test on anything unexpected and never waiting longer
// than a bound.
package chattest

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/internal/testenv"
)

// timeout bounds every dial, write and wait of a Client.
const timeout = 10 * time.Second

// Peer is a peer of the room as the room describes it: in the welcome it
// answers hello with, and in each entry of a presence list.
type Peer struct{ ID, User, Instance string }

// Presence is the room's answer to who: its peers, sorted by user.
type Presence struct{ Peers []Peer }

// Notice is a join or leave notice, sent to the clients that asked for
// events.
type Notice struct {
	Type, ID, User, Instance string
	At                       int64
}

// DM is a direct message as its recipient receives it (type "dm": From,
// User, Text, At) and as its sender's acknowledgement reports it (type
// "dm-sent": To, Text, At).
type DM struct {
	From, To, User, Text string
	At                   int64
}

// Frame is one message a Client received.
type Frame struct {
	Binary bool   // Binary reports a binary message; otherwise it is text.
	Data   string // Data is the message as it arrived.
}

// Client is a client of the room with one reader, which queues every
// message the room sends until the test asks for it. Its connection is
// closed when the test ends.
type Client struct {
	// Conn is the client's connection, for what the methods do not cover,
	// such as closing it in the middle of a test.
	Conn *websocket.Conn
	// Name names the client in failures: the query it dialed with.
	Name string

	in chan Frame
}

// Dial connects to the room at wsURL with query, the URL's query string
// without its "?", and starts the client's reader. It fails the test if the
// server does not accept the connection.
func Dial(t testing.TB, wsURL, query string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL+"?"+query, nil)
	if err != nil {
		t.Fatalf("dial %s?%s: %v", wsURL, query, err)
	}
	c := &Client{Conn: conn, Name: query, in: make(chan Frame, 64)}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			typ, b, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			select {
			case c.in <- Frame{Binary: typ == websocket.MessageBinary, Data: string(b)}:
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		conn.CloseNow()
		<-done
	})
	return c
}

// Join dials the room as Dial does and says hello: it returns once the
// server has opened the peer, with the peer its welcome describes.
func Join(t testing.TB, wsURL, query string) (*Client, Peer) {
	t.Helper()
	c := Dial(t, wsURL, query)
	c.Send(t, `{"type":"hello"}`)
	var w Peer
	c.NextOf(t, "welcome", &w)
	return c, w
}

// Send sends msg as a text message.
func (c *Client) Send(t testing.TB, msg string) {
	t.Helper()
	c.write(t, websocket.MessageText, []byte(msg))
}

// SendBinary sends data as a binary message.
func (c *Client) SendBinary(t testing.TB, data []byte) {
	t.Helper()
	c.write(t, websocket.MessageBinary, data)
}

func (c *Client) write(t testing.TB, typ websocket.MessageType, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := c.Conn.Write(ctx, typ, data); err != nil {
		t.Fatalf("%s: %v", c.Name, err)
	}
}

// NextFrame returns the next message the client receives, text or binary.
func (c *Client) NextFrame(t testing.TB) Frame {
	t.Helper()
	return testenv.Recv(t, c.in, timeout, "a message for "+c.Name)
}

// Next returns the next message the client receives, which must be text.
func (c *Client) Next(t testing.TB) string {
	t.Helper()
	f := c.NextFrame(t)
	if f.Binary {
		t.Fatalf("%s received binary %q, want text", c.Name, f.Data)
	}
	return f.Data
}

// Expect checks that the next message the client receives is the text
// want.
func (c *Client) Expect(t testing.TB, want string) {
	t.Helper()
	if got := c.Next(t); got != want {
		t.Fatalf("%s received %s, want %s", c.Name, got, want)
	}
}

// NextOf checks that the next message the client receives is a JSON
// object of type typ, decodes it into v unless v is nil, and returns it.
// Any other message fails the test: NextOf skips nothing.
func (c *Client) NextOf(t testing.TB, typ string, v any) string {
	t.Helper()
	got := c.Next(t)
	var head struct{ Type string }
	if err := json.Unmarshal([]byte(got), &head); err != nil || head.Type != typ {
		t.Fatalf("%s received %s, want a message of type %q", c.Name, got, typ)
	}
	if v != nil {
		if err := json.Unmarshal([]byte(got), v); err != nil {
			t.Fatalf("%s: %s: %v", c.Name, got, err)
		}
	}
	return got
}
