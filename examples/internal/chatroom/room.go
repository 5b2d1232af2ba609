package chatroom

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/edgesync/edgesync/edge"
)

// EventsTopic is the topic of the main room's events, join and leave
// notices, to which the clients that ask for them (events=1) are subscribed.
const EventsTopic = "chat-events"

// Topics returns the topics of the room whose namespace is ns: Topic and
// EventsTopic for the main room, and for the room NAME the same followed by
// "/NAME". Each room has topics of its own, beside its namespace, so that a
// routed cluster (which routes by topic) relays a room only to the
// instances that hold its clients.
func Topics(ns string) (chat, events string) {
	suffix := strings.TrimPrefix(ns, Namespace)
	return Topic + suffix, EventsTopic + suffix
}

// The limits of the query string.
const (
	// MaxUser is the longest display name, in runes; a longer one is cut.
	MaxUser = 32
	// MaxRoom is the longest room name, in bytes.
	MaxRoom = 32
	// Anonymous is the display name of a client that gives none.
	Anonymous = "anonymous"
)

// PresenceTimeout bounds the answer to a who command: the peers the
// Registries list by then.
const PresenceTimeout = 2 * time.Second

// sendTimeout bounds a reply to one client and a direct message.
const sendTimeout = 5 * time.Second

// The peer attributes the room sets.
const (
	AttrUser     = "user"     // the display name
	AttrInstance = "instance" // the name of the instance holding the peer
	AttrEvents   = "events"   // "1" for a client that asked for room events
)

// Params are what a client asks for in the query string of its WebSocket
// URL.
type Params struct {
	User   string // the display name, cleaned by CleanUser
	Room   string // the room name, "" for the main room
	Events bool   // the client wants room events (events=1)
}

// Namespace returns the namespace of the room p chooses: Namespace for the
// main room, Namespace + "/" + Room for another.
func (p Params) Namespace() string {
	if p.Room == "" {
		return Namespace
	}
	return Namespace + "/" + p.Room
}

// ParseQuery reads the parameters user, room and events of a WebSocket
// URL's query. It returns a *edge.Reject with status 400 Bad Request for a
// room name that is not 1 to MaxRoom of the characters A-Z, a-z, 0-9, _
// and -; an empty room= is the main room.
func ParseQuery(q url.Values) (Params, error) {
	p := Params{User: CleanUser(q.Get("user")), Room: q.Get("room"), Events: q.Get("events") == "1"}
	if p.Room != "" && !validRoom(p.Room) {
		return Params{}, &edge.Reject{
			Status: http.StatusBadRequest,
			Body:   fmt.Sprintf("chat: room must be 1 to %d of the characters A-Z a-z 0-9 _ -", MaxRoom),
		}
	}
	return p, nil
}

func validRoom(s string) bool {
	if len(s) == 0 || len(s) > MaxRoom {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// CleanUser returns the display name of s: invalid UTF-8 and control
// characters removed, spaces trimmed, at most MaxUser runes, and Anonymous
// when nothing is left.
func CleanUser(s string) string {
	s = strings.ToValidUTF8(s, "")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if utf8.RuneCountInString(s) > MaxUser {
		s = strings.TrimSpace(string([]rune(s)[:MaxUser]))
	}
	if s == "" {
		return Anonymous
	}
	return s
}

// Hooks returns the chat room's hooks, as every instance of the chat runs
// them, for the peers of hub; instance names the instance in the peers'
// instance attribute. They implement the room's protocol:
//
//   - Upgrade reads the query string (ParseQuery): the peer's namespace is
//     its room's, its attributes its user name and instance.
//   - Open subscribes the peer to its room's chat topic, and with events=1
//     to its events topic (Topics), and publishes a join notice on the
//     events topic; Close publishes a leave notice.
//   - Message answers the commands {"type":"who"} (every peer of the room,
//     cluster-wide, from Hub.Presence), {"type":"hello"} (the peer's own id,
//     user and instance) and {"type":"dm","to":ID,"text":…} (Hub.SendTo the
//     peer with that id, wherever it is, and dm-sent to the sender), each
//     answered to the sender only.
//   - Every other message is published on the room's chat topic unchanged,
//     text or binary: every other peer of the room receives exactly its
//     bytes. Only a text message whose "type" is one the server sends
//     (presence, welcome, dm, dm-sent, join, leave) is dropped, so that no
//     client can forge one.
//
// A nil hub serves a room without cluster-wide commands: who lists the
// sender alone and a dm reaches nobody.
func Hooks(hub *edge.Hub, instance string) edge.Hooks {
	r := &room{hub: hub, instance: instance}
	return edge.Hooks{
		Upgrade: r.upgrade,
		Open:    r.open,
		Message: r.message,
		Close:   r.close,
		// No Error hook: the front ends log peer errors (slow consumers,
		// floods) once per kind and interval, with a count.
	}
}

// room is the state the hooks share.
type room struct {
	hub      *edge.Hub
	instance string
}

func (r *room) upgrade(req *http.Request) (edge.Accept, error) {
	p, err := ParseQuery(req.URL.Query())
	if err != nil {
		return edge.Accept{}, err
	}
	attrs := map[string]string{AttrUser: p.User, AttrInstance: r.instance}
	if p.Events {
		attrs[AttrEvents] = "1"
	}
	return edge.Accept{Namespace: p.Namespace(), Attrs: attrs}, nil
}

func (r *room) open(p edge.Peer) {
	ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
	defer cancel()
	chat, events := Topics(p.Namespace())
	topics := []string{chat}
	if p.Attr(AttrEvents) == "1" {
		topics = append(topics, events)
	}
	for _, t := range topics {
		if err := p.Subscribe(ctx, t); err != nil {
			slog.Error("chat: subscribe", "peer", p.ID(), "topic", t, "err", err)
			_ = p.Close(1011, "cannot subscribe")
			return
		}
	}
	r.notice(ctx, p, "join")
}

func (r *room) close(p edge.Peer, _ int, _ string) {
	ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
	defer cancel()
	r.notice(ctx, p, "leave")
}

// notice is a join or leave notice.
type notice struct {
	Type     string `json:"type"`
	ID       string `json:"id"`
	User     string `json:"user"`
	Instance string `json:"instance"`
	At       int64  `json:"at"`
}

// notice publishes a join or leave notice for p on EventsTopic, to every
// other peer of its room.
func (r *room) notice(ctx context.Context, p edge.Peer, kind string) {
	b, err := json.Marshal(notice{Type: kind, ID: p.ID(), User: p.Attr(AttrUser), Instance: p.Attr(AttrInstance), At: now()})
	if err != nil {
		return // a struct of strings always marshals
	}
	d := edge.Text(string(b))
	_, events := Topics(p.Namespace())
	if kind == "join" {
		err = p.Publish(ctx, events, d)
	} else if r.hub != nil {
		// The peer may have left the hub already: publish on its behalf.
		err = r.hub.PublishFrom(ctx, edge.Message{Namespace: p.Namespace(), Topic: events, Data: d}, p.ID())
	}
	if err != nil {
		slog.Warn("chat: "+kind+" notice", "peer", p.ID(), "err", err)
	}
}

// command is a message a client sends to the server.
type command struct {
	Type string `json:"type"`
	To   string `json:"to"`
	Text string `json:"text"`
}

// serverTypes are the types of the messages the server sends: a client's
// message of one of them is not relayed.
var serverTypes = []string{"presence", "welcome", "dm", "dm-sent", "join", "leave"}

func (r *room) message(p edge.Peer, d edge.Data) {
	ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
	defer cancel()
	if cmd, ok := parseCommand(d); ok {
		switch cmd.Type {
		case "who":
			r.who(ctx, p)
		case "hello":
			r.hello(ctx, p)
		case "dm":
			r.dm(ctx, p, cmd)
		}
		return // or a forged server message, dropped
	}
	chat, _ := Topics(p.Namespace())
	if err := p.Publish(ctx, chat, d); err != nil {
		slog.Error("chat: publish", "peer", p.ID(), "err", err)
	}
}

// parseCommand returns the command d holds, or false when d is a message to
// relay. A message whose type is one the server sends is returned as a
// command, which no case answers.
func parseCommand(d edge.Data) (command, bool) {
	b := bytes.TrimLeft(d.Bytes, " \t\r\n")
	if d.Binary || len(b) == 0 || b[0] != '{' || !bytes.Contains(b, []byte(`"type"`)) {
		return command{}, false // the page's messages, and most others, end here
	}
	var cmd command
	if err := json.Unmarshal(b, &cmd); err != nil {
		// A member of the wrong type leaves the others read: a command
		// with a bad "to" or "text" is still a command.
		var typeErr *json.UnmarshalTypeError
		if !errors.As(err, &typeErr) {
			return command{}, false
		}
	}
	switch cmd.Type {
	case "who", "hello", "dm":
		return cmd, true
	}
	return cmd, slices.Contains(serverTypes, cmd.Type)
}

// presentPeer is one peer of a presence answer.
type presentPeer struct {
	ID       string `json:"id"`
	User     string `json:"user"`
	Instance string `json:"instance"`
}

func (r *room) who(ctx context.Context, p edge.Peer) {
	var list []edge.Present
	if r.hub != nil {
		pctx, cancel := context.WithTimeout(ctx, PresenceTimeout)
		var err error
		chat, _ := Topics(p.Namespace())
		list, err = r.hub.Presence(pctx, p.Namespace(), chat)
		cancel()
		if err != nil {
			// What the Registries listed before the error is answered.
			slog.Warn("chat: presence", "peer", p.ID(), "err", err)
		}
	}
	peers := make([]presentPeer, 0, len(list)+1)
	self := false
	for _, e := range list {
		self = self || e.ID == p.ID()
		peers = append(peers, presentPeer{ID: e.ID, User: cmp.Or(e.Attrs[AttrUser], Anonymous), Instance: e.Attrs[AttrInstance]})
	}
	if !self {
		peers = append(peers, presentPeer{ID: p.ID(), User: p.Attr(AttrUser), Instance: p.Attr(AttrInstance)})
	}
	slices.SortFunc(peers, func(a, b presentPeer) int {
		return cmp.Or(strings.Compare(a.User, b.User), strings.Compare(a.ID, b.ID))
	})
	r.reply(ctx, p, struct {
		Type  string        `json:"type"`
		Peers []presentPeer `json:"peers"`
	}{"presence", peers})
}

func (r *room) hello(ctx context.Context, p edge.Peer) {
	r.reply(ctx, p, struct {
		Type     string `json:"type"`
		ID       string `json:"id"`
		User     string `json:"user"`
		Instance string `json:"instance"`
	}{"welcome", p.ID(), p.Attr(AttrUser), p.Attr(AttrInstance)})
}

func (r *room) dm(ctx context.Context, p edge.Peer, cmd command) {
	if cmd.To == "" || r.hub == nil {
		return
	}
	at := now()
	b, err := json.Marshal(struct {
		Type string `json:"type"`
		From string `json:"from"`
		User string `json:"user"`
		Text string `json:"text"`
		At   int64  `json:"at"`
	}{"dm", p.ID(), p.Attr(AttrUser), cmd.Text, at})
	if err != nil {
		return
	}
	// A peer that does not exist is not an error: the message reaches
	// nobody, and the sender cannot tell.
	if err := r.hub.SendTo(ctx, cmd.To, edge.Text(string(b))); err != nil {
		slog.Warn("chat: dm", "peer", p.ID(), "to", cmd.To, "err", err)
		return
	}
	r.reply(ctx, p, struct {
		Type string `json:"type"`
		To   string `json:"to"`
		Text string `json:"text"`
		At   int64  `json:"at"`
	}{"dm-sent", cmd.To, cmd.Text, at})
}

// reply sends v as JSON text to p alone.
func (r *room) reply(ctx context.Context, p edge.Peer, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	if err := p.Send(ctx, edge.Text(string(b))); err != nil {
		slog.Warn("chat: reply", "peer", p.ID(), "err", err)
	}
}

// now is the time of a message, in milliseconds since the epoch.
func now() int64 { return time.Now().UnixMilli() }
