package tests

import (
	"bufio"
	"cmp"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/internal/testenv"
)

// lambdaInstance is the instance name the chat Lambda gives its clients.
const lambdaInstance = "lambda"

// mixedCluster is one chat room on one backplane channel, each instance its
// own OS process: long-lived examples/chat servers, which post to API
// Gateway's connections themselves (-apigw-endpoint), and the chat
// Lambda's bootstrap in two processes under the API Gateway emulator.
type mixedCluster struct {
	backplane string // "redis" or "postgres"
	url       string // the backplane's URL
	channel   string
	lambda    string // ws://host/stage, where the Lambda's clients connect
	endpoint  string // http://host/stage, the emulator's management API
	vms       map[string]*chatProcess
}

// startMixedCluster starts the emulator around the chat Lambda, then one
// long-lived chat server for each name in vms (its -name), all on a new
// channel of backplane ("redis" or "postgres") at url. vmArgs are given to
// every long-lived server.
func startMixedCluster(t *testing.T, backplane, url string, vms []string, vmArgs ...string) *mixedCluster {
	t.Helper()
	channel := testenv.Channel(t)
	env := "EDGESYNC_REDIS_URL="
	if backplane == "postgres" {
		env = "EDGESYNC_POSTGRES_URL="
	}
	// The emulator first: its URL gives the long-lived servers the
	// management endpoint.
	lambda := startEmulator(t, lambdaBinary(t), 2, env+url, "EDGESYNC_CHANNEL="+channel)
	m := &mixedCluster{
		backplane: backplane, url: url, channel: channel,
		lambda:   lambda,
		endpoint: "http" + strings.TrimPrefix(lambda, "ws"),
		vms:      make(map[string]*chatProcess),
	}
	bin := chatBinary(t)
	for _, name := range vms {
		args := append([]string{"-" + backplane, url, "-channel", channel, "-apigw-endpoint", m.endpoint, "-name", name}, vmArgs...)
		m.vms[name] = startChat(t, bin, args...)
	}
	return m
}

// chatClient is a WebSocket client of the chat room, on one instance, that
// knows its own peer id.
type chatClient struct {
	*client
	user     string
	instance string          // the instance attribute the room gives it
	id       string          // its peer id, from the welcome
	skipped  map[string]bool // server messages, as canon gives them, that read skips
}

// join connects a client named user to instance, a long-lived server's name
// or lambdaInstance, with query added to its query string (for example
// "room=other"), and learns its id with hello. Its reads skip the server
// messages skip (see chatClient.skip), from the first.
func (m *mixedCluster) join(t *testing.T, instance, user, query string, skip ...serverMessage) *chatClient {
	t.Helper()
	q := url.Values{"user": {user}}
	if query != "" {
		extra, err := url.ParseQuery(query)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range extra {
			q[k] = v
		}
	}
	var u string
	if instance == lambdaInstance {
		u = m.lambda + "?" + q.Encode()
	} else {
		vm := m.vms[instance]
		if vm == nil {
			t.Fatalf("no instance %q", instance)
		}
		u = "ws://" + vm.addr + "/_ws?" + q.Encode()
	}
	c := &chatClient{client: dial(t, u), user: user, instance: instance}
	for _, m := range skip {
		c.skip(t, m)
	}
	c.hello(t)
	return c
}

// hello asks the server who c is, and checks the answer.
func (c *chatClient) hello(t *testing.T) {
	t.Helper()
	c.send(t, websocket.MessageText, `{"type":"hello"}`)
	var w struct {
		Type, ID, User, Instance string
	}
	c.nextJSON(t, &w)
	if w.Type != "welcome" || w.ID == "" || w.User != c.user || w.Instance != c.instance {
		t.Fatalf("%s: hello answered %+v, want a welcome with an id, user %q and instance %q", c, w, c.user, c.instance)
	}
	c.id = w.ID
}

// leave closes c's connection normally, and waits for the server's close.
func (c *chatClient) leave(t *testing.T) {
	t.Helper()
	if err := c.conn.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatalf("%s: close: %v", c, err)
	}
}

func (c *chatClient) String() string { return c.user + "@" + c.instance }

// skip makes c's reads pass over the server message m, which may or may
// not come, as often as it comes.
func (c *chatClient) skip(t *testing.T, m serverMessage) {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if c.skipped == nil {
		c.skipped = make(map[string]bool)
	}
	c.skipped[string(b)] = true
}

// read returns the next message c receives that it does not skip.
func (c *chatClient) read(t *testing.T) frame {
	t.Helper()
	for {
		f := c.next(t)
		if f.typ == websocket.MessageText && len(c.skipped) > 0 {
			if s, err := canon(f.data); err == nil && c.skipped[s] {
				continue
			}
		}
		return f
	}
}

// nextJSON reads the next message, which must be JSON text, into v.
func (c *chatClient) nextJSON(t *testing.T, v any) string {
	t.Helper()
	f := c.read(t)
	if f.typ != websocket.MessageText {
		t.Fatalf("%s: received a binary message %q, want JSON text", c, f.data)
	}
	if err := json.Unmarshal([]byte(f.data), v); err != nil {
		t.Fatalf("%s: received %q: %v", c, f.data, err)
	}
	return f.data
}

// expect reads len(want) messages from c, which must be want's in any
// order, each once. what names the step in a failure.
func (c *chatClient) expect(t *testing.T, what string, want []frame) {
	t.Helper()
	left := slices.Clone(want)
	for range want {
		f := c.read(t)
		i := slices.Index(left, f)
		if i < 0 {
			t.Fatalf("%s, %s: unexpected %s %q (own, duplicate, another room's or early); still waiting for %v", what, c, kind(f.typ), f.data, left)
		}
		left = slices.Delete(left, i, i+1)
	}
}

func kind(typ websocket.MessageType) string {
	if typ == websocket.MessageBinary {
		return "binary"
	}
	return "text"
}

// text is a text frame.
func text(s string) frame { return frame{websocket.MessageText, s} }

// chatLine is a message as the page sends it, which the room relays
// unchanged.
func chatLine(user, text string) string {
	b, _ := json.Marshal(struct {
		User string `json:"user"`
		Text string `json:"text"`
	}{user, text})
	return string(b)
}

// exchange has every client of every room say label at once; then every
// client must receive what each other client of its room said, exactly
// once, and nothing of its own nor of another room. Followed by an exchange
// under another label, it also proves that nothing more of the first was on
// its way: every path delivers in order.
func exchange(t *testing.T, label string, rooms ...[]*chatClient) {
	t.Helper()
	for _, room := range rooms {
		for _, c := range room {
			c.send(t, websocket.MessageText, chatLine(c.user, label+" from "+c.user))
		}
	}
	for _, room := range rooms {
		for _, c := range room {
			var want []frame
			for _, o := range room {
				if o != c {
					want = append(want, text(chatLine(o.user, label+" from "+o.user)))
				}
			}
			c.expect(t, label, want)
		}
	}
}

// serverMessage is a message the server sends, as canon gives it.
type serverMessage map[string]any

// canon returns the JSON text s with its members sorted and "at" removed.
// It returns an error unless s is a JSON object whose "at", when there is
// one, is a time in milliseconds within the last minute.
func canon(s string) (string, error) {
	var m serverMessage
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return "", err
	}
	if at, ok := m["at"]; ok {
		ms, ok := at.(float64)
		if now := float64(time.Now().UnixMilli()); !ok || ms > now+1000 || ms < now-60_000 {
			return "", fmt.Errorf("at is %v, not the time in milliseconds", at)
		}
		delete(m, "at")
	}
	b, err := json.Marshal(m)
	return string(b), err
}

// expectServer reads len(want) messages from c, which must be JSON objects
// equal to want's, "at" aside, in any order, each once.
func (c *chatClient) expectServer(t *testing.T, what string, want ...serverMessage) {
	t.Helper()
	var left []string
	for _, w := range want {
		b, err := json.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		left = append(left, string(b))
	}
	for range want {
		f := c.read(t)
		if f.typ != websocket.MessageText {
			t.Fatalf("%s, %s: unexpected binary %q", what, c, f.data)
		}
		got, err := canon(f.data)
		if err != nil {
			t.Fatalf("%s, %s: unexpected %q: %v", what, c, f.data, err)
		}
		i := slices.Index(left, got)
		if i < 0 {
			t.Fatalf("%s, %s: unexpected %s; still waiting for %v", what, c, f.data, left)
		}
		left = slices.Delete(left, i, i+1)
	}
}

// present is one peer of a presence answer.
type present struct {
	ID       string `json:"id"`
	User     string `json:"user"`
	Instance string `json:"instance"`
}

// presenceOf lists clients as the room's who answers them: sorted by user,
// then id.
func presenceOf(clients ...*chatClient) []present {
	var list []present
	for _, c := range clients {
		list = append(list, present{c.id, c.user, c.instance})
	}
	slices.SortFunc(list, func(a, b present) int {
		return cmp.Or(strings.Compare(a.User, b.User), strings.Compare(a.ID, b.ID))
	})
	return list
}

// who asks the room who is in it, and returns the answer.
func (c *chatClient) who(t *testing.T) []present {
	t.Helper()
	c.send(t, websocket.MessageText, `{"type":"who"}`)
	var p struct {
		Type  string    `json:"type"`
		Peers []present `json:"peers"`
	}
	raw := c.nextJSON(t, &p)
	if p.Type != "presence" {
		t.Fatalf("%s: who answered %s, want a presence", c, raw)
	}
	return p.Peers
}

// presencePoll is how often awaitWho asks again.
const presencePoll = 100 * time.Millisecond

// awaitWho asks the room who is in it until the answer is want, and fails t
// at deadline. Presence converges rather than being exact at once: each
// long-lived instance writes its records to the shared Registry
// asynchronously, and the records of a dead one are listed until they
// expire. So this is a polling loop on an external condition, with a short
// ticker between answers, bounded by deadline.
func (c *chatClient) awaitWho(t *testing.T, what string, want []present, deadline time.Time) {
	t.Helper()
	tick := time.NewTicker(presencePoll)
	defer tick.Stop()
	for {
		got := c.who(t)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s, asked from %s: who answered\n%v\nwant\n%v", what, c, got, want)
		}
		<-tick.C
	}
}

// crosswsModules returns the node_modules folder holding crossws, redis and
// pg, or skips t as the crossws interoperability test does.
func crosswsModules(t *testing.T) string {
	t.Helper()
	modules := os.Getenv("EDGESYNC_CROSSWS_NODE_MODULES")
	if modules == "" {
		t.Skip("set EDGESYNC_CROSSWS_NODE_MODULES to a node_modules folder holding crossws, redis and pg (.ci/run does)")
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed")
	}
	return modules
}

// startCrosswsChat runs testdata/crossws-mixed.mjs, a crossws chat server on
// Node, on the cluster's channel, and returns its address once it listens
// and is subscribed. It is stopped, by closing its standard input, when the
// test ends.
func (m *mixedCluster) startCrosswsChat(t *testing.T) string {
	t.Helper()
	crosswsModules(t)
	node := exec.Command("node", "testdata/crossws-mixed.mjs", m.backplane, m.url, m.channel)
	node.Stderr = testLog{t, "crossws chat"}
	stdin, err := node.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := node.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	exited := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var line struct{ Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Addr != "" {
				addr <- line.Addr
			}
		}
		exited <- node.Wait()
	}()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("crossws chat: %v", err)
			}
		case <-time.After(wait):
			node.Process.Kill()
			<-exited
			t.Errorf("crossws chat did not stop within %v", wait)
		}
	})
	select {
	case a := <-addr:
		return a
	case err := <-exited:
		exited <- err // for the cleanup
		t.Fatalf("crossws chat ended before listening: %v", err)
	case <-time.After(wait):
		t.Fatal("crossws chat did not listen")
	}
	return ""
}

// joinCrossws connects a client to the crossws chat server at addr. The
// crossws chat knows no commands: the client has no id.
func joinCrossws(t *testing.T, addr, user string) *chatClient {
	t.Helper()
	return &chatClient{client: dial(t, "ws://"+addr+"/"), user: user, instance: "crossws"}
}

// base64Text is the text frame an API Gateway client receives for binary
// data: its standard, padded base64.
func base64Text(b []byte) frame { return text(base64.StdEncoding.EncodeToString(b)) }
