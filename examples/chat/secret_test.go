package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/examples/internal/chatroom"
	"github.com/edgesync/edgesync/internal/testenv"
)

func TestSecretConfig(t *testing.T) {
	env := map[string]string{"EDGESYNC_SECRET": "new,old"}
	cfg, err := parseConfig(nil, func(k string) string { return env[k] }, io.Discard)
	if err != nil || cfg.secret != "new,old" {
		t.Fatalf("EDGESYNC_SECRET: %+v, %v", cfg, err)
	}
	cfg, err = parseConfig([]string{"-secret", "other"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil || cfg.secret != "other" {
		t.Fatalf("-secret overrides EDGESYNC_SECRET: %+v, %v", cfg, err)
	}
	keys, err := chatroom.SigningKeys("new,old")
	if err != nil || !slices.EqualFunc(keys, [][]byte{[]byte("new"), []byte("old")}, slices.Equal) {
		t.Fatalf("chatroom.SigningKeys(new,old) = %q, %v", keys, err)
	}
	if keys, err := chatroom.SigningKeys(""); keys != nil || err != nil {
		t.Fatalf("chatroom.SigningKeys(\"\") = %q, %v; want none", keys, err)
	}
	if _, _, err := newHub(context.Background(), config{cluster: "/nonexistent/s", secret: "a,,b"}, nil); err == nil {
		t.Fatal("a secret with an empty key accepted")
	}
}

// startSignedChat serves the chat over the cluster socket with secret, as
// main does, and returns what its hub reported.
func startSignedChat(t *testing.T, socket, secret string) (string, <-chan edge.Peer, *testenv.ErrorLog) {
	t.Helper()
	return startChatWith(t, config{cluster: socket, channel: "chat", secret: secret})
}

// Servers run with the same -secret chat together; one with another secret
// cannot post into their chat.
func TestSecretSignsTheChat(t *testing.T) {
	dir, err := os.MkdirTemp("", "chat")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "s")
	urlA, openedA, _ := startSignedChat(t, socket, "new-key,old-key")
	urlB, openedB, logB := startSignedChat(t, socket, "old-key,new-key")
	urlC, openedC, _ := startSignedChat(t, socket, "another-key")
	a, b, c := dial(t, urlA, openedA), dial(t, urlB, openedB), dial(t, urlC, openedC)

	send(t, c, `{"user":"mallory","text":"forged"}`)
	if err := logB.Await(t, edge.StageDelivery, 0, wait); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("B reported %v; want ErrSignature", err)
	}
	send(t, a, `{"user":"alice","text":"hi"}`)
	expect(t, b, `{"user":"alice","text":"hi"}`) // and not the forged one before it
}
