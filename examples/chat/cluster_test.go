package main

import (
	"context"
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
	"github.com/edgesync/edgesync/examples/internal/chattest"
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

// joinRoom joins the room at wsURL as user, with room events, and checks
// that its welcome names the user and gives an id; it returns the client
// and its welcome.
func joinRoom(t *testing.T, wsURL, user string) (*chattest.Client, chattest.Peer) {
	t.Helper()
	c, w := chattest.Join(t, wsURL, "events=1&user="+user)
	if w.User != user || w.ID == "" {
		t.Fatalf("%s: welcome %+v", user, w)
	}
	return c, w
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

	ann, wa := joinRoom(t, "ws"+strings.TrimPrefix(vmURL, "http")+"/_ws", "ann")
	if wa.Instance != "vm a" {
		t.Fatalf("ann's instance is %q, want the -name", wa.Instance)
	}
	// Ann's presence record is written.
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := vmHub.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	bob, wb := joinRoom(t, "ws://"+api+"/local", "bob")
	if wb.Instance != "lambda" {
		t.Fatalf("bob's instance is %q, want lambda", wb.Instance)
	}
	var n chattest.Notice
	ann.NextOf(t, "join", &n)
	if n.ID != wb.ID || n.User != "bob" || n.Instance != "lambda" {
		t.Fatalf("ann received the join %+v, want bob's", n)
	}

	want := []chattest.Peer{
		{ID: wa.ID, User: "ann", Instance: "vm a"},
		{ID: wb.ID, User: "bob", Instance: "lambda"},
	}
	for _, c := range []*chattest.Client{ann, bob} {
		c.Send(t, `{"type":"who"}`)
		var p chattest.Presence
		c.NextOf(t, "presence", &p)
		if len(p.Peers) != 2 || p.Peers[0] != want[0] || p.Peers[1] != want[1] {
			t.Fatalf("%s: who answered %+v, want %+v", c.Name, p.Peers, want)
		}
	}

	// From the long-lived chat to API Gateway, posted directly.
	ann.Send(t, `{"type":"dm","to":"`+wb.ID+`","text":"hi bob"}`)
	var d chattest.DM
	bob.NextOf(t, "dm", &d)
	if d.From != wa.ID || d.User != "ann" || d.Text != "hi bob" {
		t.Fatalf("bob received %+v", d)
	}
	ann.NextOf(t, "dm-sent", &d)
	if d.To != wb.ID || d.Text != "hi bob" {
		t.Fatalf("ann received %+v", d)
	}
	// From the Lambda to the long-lived chat, through the backplane.
	bob.Send(t, `{"type":"dm","to":"`+wa.ID+`","text":"hi ann"}`)
	ann.NextOf(t, "dm", &d)
	if d.From != wb.ID || d.User != "bob" || d.Text != "hi ann" {
		t.Fatalf("ann received %+v", d)
	}
	bob.NextOf(t, "dm-sent", &d)
	if d.To != wa.ID {
		t.Fatalf("bob received %+v", d)
	}

	// The relay, both ways.
	fromAnn, fromBob := `{"user":"ann","text":"to the room"}`, `{"user":"bob","text":"back"}`
	ann.Send(t, fromAnn)
	bob.Expect(t, fromAnn)
	bob.Send(t, fromBob)
	ann.Expect(t, fromBob)

	bob.Conn.Close(websocket.StatusNormalClosure, "")
	ann.NextOf(t, "leave", &n)
	if n.ID != wb.ID || n.User != "bob" {
		t.Fatalf("ann received the leave %+v, want bob's", n)
	}
}

func TestMixedClusterRedis(t *testing.T) {
	mixedCluster(t, config{redis: testenv.RedisURL(t), channel: testenv.Channel(t)})
}

func TestMixedClusterPostgres(t *testing.T) {
	mixedCluster(t, config{postgres: testenv.PostgresURL(t), channel: testenv.Channel(t)})
}
