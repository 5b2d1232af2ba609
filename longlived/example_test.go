package longlived_test

import (
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"strings"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

// A chat room: every peer subscribes to "chat" and publishes there what it
// sends, reaching everyone else in its namespace.
func ExampleNew() {
	ctx := context.Background()
	hub, err := edge.New(edge.Options{}) // alone; set Sync to join a cluster
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close()
	h := longlived.New(hub, edge.Hooks{
		Open: func(p edge.Peer) {
			_ = p.Subscribe(ctx, "chat")
			_ = p.Send(ctx, edge.Text("welcome to "+p.Namespace()))
		},
		Message: func(p edge.Peer, d edge.Data) {
			_ = p.Publish(ctx, "chat", d)
		},
	})
	// A server would http.Handle("/_ws", h) and call h.Close on shutdown.
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer h.Close(ctx)

	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/_ws"
	alice, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer alice.Close(websocket.StatusNormalClosure, "")
	bob, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer bob.Close(websocket.StatusNormalClosure, "")

	_, msg, _ := alice.Read(ctx)
	fmt.Println("alice:", string(msg))
	_, msg, _ = bob.Read(ctx)
	fmt.Println("bob:", string(msg))

	_ = alice.Write(ctx, websocket.MessageText, []byte("hello from alice"))
	_, msg, _ = bob.Read(ctx)
	fmt.Println("bob:", string(msg))
	// Output:
	// alice: welcome to /_ws
	// bob: welcome to /_ws
	// bob: hello from alice
}
