package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/apigw"
	"github.com/edgesync/edgesync/apigw/emulator"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/examples/internal/chatroom"
	"github.com/edgesync/edgesync/internal/testenv"
)

// startLambda serves the chat as examples/chat-lambda does under the API
// Gateway emulator, in process, on the backplane cfg chooses, and returns
// the address of the emulated API: its WebSocket endpoint and its
// management endpoint are at /local.
func startLambda(t *testing.T, cfg chatroom.Config) string {
	t.Helper()
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	backplane, err := chatroom.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := apigw.NewGateway(ctx, apigw.GatewayOptions{
		Registry: backplane.Registry,
		Endpoint: "http://" + ln.Addr().String() + "/local",
		Config:   &aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("local", "local", "")},
	})
	if err != nil {
		t.Fatal(err)
	}
	hub, err := edge.New(edge.Options{Sync: backplane.Sync, PublishOnly: true, Gateway: gw, Presence: backplane.Presence})
	if err != nil {
		t.Fatal(err)
	}
	h := apigw.NewHandler(hub, chatroom.Hooks(hub, "lambda"), backplane.Registry, gw)
	emu, err := emulator.New(emulator.Options{Stage: "local", Handler: emulator.NewHandler(h.Handle)})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: emu}
	go srv.Serve(ln)
	t.Cleanup(func() {
		if err := emu.Close(); err != nil {
			t.Errorf("close the emulator: %v", err)
		}
		srv.Close()
		hub.Close()
		backplane.Close()
	})
	return ln.Addr().String()
}

// chatClient is a client of the room with one reader.
type chatClient struct {
	conn *websocket.Conn
	in   chan string
	name string
}

// joinRoom connects to the WebSocket endpoint wsURL as user, with room
// events, and says hello: it returns once the server has opened the peer,
// with the peer's id and instance from its welcome.
func joinRoom(t *testing.T, wsURL, user string) (c *chatClient, id, instance string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL+"?events=1&user="+user, nil)
	if err != nil {
		t.Fatalf("%s: dial %s: %v", user, wsURL, err)
	}
	c = &chatClient{conn: conn, in: make(chan string, 64), name: user}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, b, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			c.in <- string(b)
		}
	}()
	t.Cleanup(func() {
		conn.CloseNow()
		<-done
	})
	c.send(t, `{"type":"hello"}`)
	var w struct{ ID, User, Instance string }
	c.next(t, "welcome", &w)
	if w.User != user || w.ID == "" {
		t.Fatalf("%s: welcome %+v", user, w)
	}
	return c, w.ID, w.Instance
}

func (c *chatClient) send(t *testing.T, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
}

// next decodes the next message into v, which must have type typ, and
// returns it; typ "" takes any message, raw.
func (c *chatClient) next(t *testing.T, typ string, v any) string {
	t.Helper()
	got := testenv.Recv(t, c.in, wait, typ+" message for "+c.name)
	if typ == "" {
		return got
	}
	var head struct{ Type string }
	if err := json.Unmarshal([]byte(got), &head); err != nil || head.Type != typ {
		t.Fatalf("%s received %s, want a message of type %q", c.name, got, typ)
	}
	if err := json.Unmarshal([]byte(got), v); err != nil {
		t.Fatalf("%s: %s: %v", c.name, got, err)
	}
	return got
}

// mixedCluster runs a long-lived chat given -apigw-endpoint and the chat
// Lambda under the emulator on one backplane, and checks what their
// clients see of each other: who lists both, with user and instance; a dm
// reaches a client on the other kind of instance, and its sender gets
// dm-sent; join notices and messages cross both ways.
func mixedCluster(t *testing.T, cfg config) {
	api := startLambda(t, chatroom.Config{Redis: cfg.redis, Postgres: cfg.postgres, Channel: cfg.channel})
	cfg.apigw, cfg.name = "http://"+api+"/local", "vm a"
	vmURL, _, log, vmHub := startChatHub(t, cfg) // its one peer fits the channel of opened peers
	t.Cleanup(func() {
		if n := log.Count(edge.StagePublish) + log.Count(edge.StageDelivery); n > 0 {
			t.Errorf("the long-lived hub reported %d errors: %s", n, log)
		}
	})

	ann, annID, annInstance := joinRoom(t, "ws"+strings.TrimPrefix(vmURL, "http")+"/_ws", "ann")
	if annInstance != "vm a" {
		t.Fatalf("ann's instance is %q, want the -name", annInstance)
	}
	// Ann's presence record is written.
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := vmHub.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	bob, bobID, bobInstance := joinRoom(t, "ws://"+api+"/local", "bob")
	if bobInstance != "lambda" {
		t.Fatalf("bob's instance is %q, want lambda", bobInstance)
	}
	var n struct{ Type, ID, User, Instance string }
	ann.next(t, "join", &n)
	if n.ID != bobID || n.User != "bob" || n.Instance != "lambda" {
		t.Fatalf("ann received the join %+v, want bob's", n)
	}

	want := []struct{ ID, User, Instance string }{{annID, "ann", "vm a"}, {bobID, "bob", "lambda"}}
	for _, c := range []*chatClient{ann, bob} {
		c.send(t, `{"type":"who"}`)
		var p struct {
			Peers []struct{ ID, User, Instance string }
		}
		c.next(t, "presence", &p)
		if len(p.Peers) != 2 || p.Peers[0] != want[0] || p.Peers[1] != want[1] {
			t.Fatalf("%s: who answered %+v, want %+v", c.name, p.Peers, want)
		}
	}

	type dm struct{ From, To, User, Text string }
	// From the long-lived chat to API Gateway, posted directly.
	ann.send(t, `{"type":"dm","to":"`+bobID+`","text":"hi bob"}`)
	var d dm
	bob.next(t, "dm", &d)
	if d.From != annID || d.User != "ann" || d.Text != "hi bob" {
		t.Fatalf("bob received %+v", d)
	}
	ann.next(t, "dm-sent", &d)
	if d.To != bobID || d.Text != "hi bob" {
		t.Fatalf("ann received %+v", d)
	}
	// From the Lambda to the long-lived chat, through the backplane.
	bob.send(t, `{"type":"dm","to":"`+annID+`","text":"hi ann"}`)
	ann.next(t, "dm", &d)
	if d.From != bobID || d.User != "bob" || d.Text != "hi ann" {
		t.Fatalf("ann received %+v", d)
	}
	bob.next(t, "dm-sent", &d)
	if d.To != annID {
		t.Fatalf("bob received %+v", d)
	}

	// The relay, both ways.
	fromAnn, fromBob := `{"user":"ann","text":"to the room"}`, `{"user":"bob","text":"back"}`
	ann.send(t, fromAnn)
	if got := bob.next(t, "", nil); got != fromAnn {
		t.Fatalf("bob received %s, want %s", got, fromAnn)
	}
	bob.send(t, fromBob)
	if got := ann.next(t, "", nil); got != fromBob {
		t.Fatalf("ann received %s, want %s", got, fromBob)
	}

	bob.conn.Close(websocket.StatusNormalClosure, "")
	ann.next(t, "leave", &n)
	if n.ID != bobID || n.User != "bob" {
		t.Fatalf("ann received the leave %+v, want bob's", n)
	}
}

func TestMixedClusterRedis(t *testing.T) {
	mixedCluster(t, config{redis: testenv.RedisURL(t), channel: testenv.Channel(t)})
}

func TestMixedClusterPostgres(t *testing.T) {
	mixedCluster(t, config{postgres: testenv.PostgresURL(t), channel: testenv.Channel(t)})
}
