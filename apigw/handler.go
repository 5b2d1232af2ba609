package apigw

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/edgesync/edgesync/edge"
)

// flushMargin is the part of an invocation's time left for returning the
// response once Hub.Flush has given up.
const flushMargin = 100 * time.Millisecond

// Handler runs edge.Hooks for the events of an API Gateway WebSocket API:
// $connect, $disconnect, $default and any custom route. Use it as the
// Lambda function's handler:
//
//	lambda.Start(h.Handle)
//
// The Hub, Registry, Gateway and the clients behind them are made once per
// cold start and reused by every invocation. The Hub should be publish-only
// (edge.Options{PublishOnly: true}) with the Gateway as its Gateway: a
// Lambda instance holds no peers in memory, so it relays out and never
// subscribes to the backplane.
//
// A Handler is safe for concurrent use. Set its fields before the first
// event; NewHandler sets the required ones.
type Handler struct {
	// Hub publishes for the peers: to the other gateway-held peers
	// through its Gateway, to the other instances through its driver.
	Hub *edge.Hub
	// Hooks are the application, the same as on any front end.
	Hooks edge.Hooks
	// Registry keeps the connections, their namespaces, attributes and
	// topics between invocations, on any Lambda instance.
	Registry edge.Registry
	// Gateway posts to connections and deletes them. It learns its
	// management endpoint from the first event when it has none.
	Gateway *Gateway

	// Routes lists the custom route keys the API sends to this handler,
	// besides $connect, $disconnect and $default. A message on a route that
	// is not listed gets a 400 response naming it. nil accepts every route.
	Routes []string

	// ConnTTL is how long the Registry keeps a connection that never got a
	// $disconnect event. 0 means edge.DefaultConnTTL, API Gateway's
	// longest connection.
	ConnTTL time.Duration
	// Logger is where errors go that no Hooks.Error takes. nil means
	// slog.Default().
	Logger *slog.Logger

	once   sync.Once
	runner *edge.HookRunner
}

// NewHandler returns a Handler that runs hooks for the connections kept in
// registry, publishing through hub and posting through gateway.
func NewHandler(hub *edge.Hub, hooks edge.Hooks, registry edge.Registry, gateway *Gateway) *Handler {
	return &Handler{Hub: hub, Hooks: hooks, Registry: registry, Gateway: gateway}
}

func (h *Handler) hooks() *edge.HookRunner {
	h.once.Do(func() { h.runner = &edge.HookRunner{Hooks: h.Hooks, Logger: h.Logger, Name: "apigw"} })
	return h.runner
}

// Handle handles one event. A malformed event (no connection id, an
// unknown event type, a body that is not valid base64 or UTF-8) gets a
// response with status 400 and the reason, never a panic; a failure of the
// Registry gets 500. Before it returns, Handle waits with Hub.Flush until
// everything the hooks published has been posted and relayed, within ctx's
// deadline less a margin for the response, because Lambda freezes the
// process once the handler has returned.
func (h *Handler) Handle(ctx context.Context, ev events.APIGatewayWebsocketProxyRequest) (resp events.APIGatewayProxyResponse, err error) {
	defer func() {
		if v := recover(); v != nil {
			h.hooks().Error(nil, &edge.PanicError{Value: v, Stack: debug.Stack()})
			resp, err = respond(http.StatusInternalServerError, "internal error"), nil
		}
	}()
	if h.Hub == nil || h.Registry == nil || h.Gateway == nil {
		return respond(http.StatusInternalServerError, "apigw: Handler needs a Hub, a Registry and a Gateway"), nil
	}
	rc := &ev.RequestContext
	if rc.ConnectionID == "" {
		return respond(http.StatusBadRequest, "apigw: event without a connection id"), nil
	}
	if h.Gateway.Endpoint() == "" && rc.DomainName != "" && rc.Stage != "" {
		h.Gateway.SetEndpoint("https://" + rc.DomainName + "/" + rc.Stage)
	}
	defer h.flush(ctx)
	switch rc.EventType {
	case "CONNECT":
		return h.connect(ctx, &ev), nil
	case "MESSAGE":
		return h.message(ctx, &ev), nil
	case "DISCONNECT":
		return h.disconnect(ctx, &ev), nil
	}
	return respond(http.StatusBadRequest, fmt.Sprintf("apigw: unknown event type %q", rc.EventType)), nil
}

// flush waits for what the invocation published, within its deadline.
func (h *Handler) flush(ctx context.Context) {
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-flushMargin))
		defer cancel()
	}
	if err := h.Hub.Flush(ctx); err != nil && !errors.Is(err, edge.ErrClosed) {
		h.hooks().Error(nil, fmt.Errorf("apigw: flush before returning: %w", err))
	}
}

func (h *Handler) connect(ctx context.Context, ev *events.APIGatewayWebsocketProxyRequest) events.APIGatewayProxyResponse {
	rc := &ev.RequestContext
	accept, err := h.hooks().Upgrade(connectRequest(ctx, ev))
	if err != nil {
		return refusal(err)
	}
	connectedAt := time.Now()
	if rc.ConnectedAt > 0 {
		connectedAt = time.UnixMilli(rc.ConnectedAt)
	}
	ttl := h.ConnTTL
	if ttl <= 0 {
		ttl = edge.DefaultConnTTL
	}
	c := edge.Conn{
		ID:          rc.ConnectionID,
		Namespace:   accept.Namespace,
		Attrs:       maps.Clone(accept.Attrs),
		ConnectedAt: connectedAt,
		ExpiresAt:   connectedAt.Add(ttl),
	}
	if err := h.Registry.Add(ctx, c); err != nil {
		h.hooks().Error(nil, fmt.Errorf("apigw: recording connection %q: %w", c.ID, err))
		return respond(http.StatusInternalServerError, "apigw: could not record the connection")
	}
	p := h.peer(ctx, c, true)
	if !h.hooks().Open(p) || p.refused() {
		// Open closed the peer (or panicked, which closes it with 1011)
		// before API Gateway made it a connection: it is refused, and
		// since no $disconnect follows a refused $connect, this is its
		// end.
		code, reason := p.closeStatus()
		_ = h.Registry.Remove(ctx, c.ID)
		h.hooks().Close(p, code, reason)
		if code == edge.StatusInternalError {
			return respond(http.StatusInternalServerError, "internal error")
		}
		return respond(http.StatusForbidden, http.StatusText(http.StatusForbidden))
	}
	p.connected()
	resp := events.APIGatewayProxyResponse{StatusCode: http.StatusOK}
	for k, vs := range accept.Header {
		if len(vs) == 0 {
			continue
		}
		if resp.MultiValueHeaders == nil {
			resp.Headers, resp.MultiValueHeaders = map[string]string{}, map[string][]string{}
		}
		if strings.EqualFold(k, "Sec-WebSocket-Protocol") {
			k = "Sec-WebSocket-Protocol"
		}
		resp.Headers[k] = strings.Join(vs, ", ")
		resp.MultiValueHeaders[k] = vs
	}
	return resp
}

func (h *Handler) message(ctx context.Context, ev *events.APIGatewayWebsocketProxyRequest) events.APIGatewayProxyResponse {
	id, route := ev.RequestContext.ConnectionID, ev.RequestContext.RouteKey
	if h.Hooks.Message == nil {
		return respond(http.StatusBadRequest, fmt.Sprintf("apigw: no Message hook for route %q", route))
	}
	if route != "$default" && h.Routes != nil && !slices.Contains(h.Routes, route) {
		return respond(http.StatusBadRequest, fmt.Sprintf("apigw: unknown route %q", route))
	}
	d := edge.Text(ev.Body)
	if ev.IsBase64Encoded {
		b, err := base64.StdEncoding.DecodeString(ev.Body)
		if err != nil {
			return respond(http.StatusBadRequest, "apigw: body is not valid base64: "+err.Error())
		}
		d = edge.Binary(b)
	}
	if !d.Valid() {
		return respond(http.StatusBadRequest, "apigw: text body is not valid UTF-8")
	}
	c, err := h.Registry.Get(ctx, id)
	if errors.Is(err, edge.ErrNotFound) {
		// Expired or never recorded: the peer cannot be rebuilt, so the
		// connection is ended and the client may connect again.
		_ = h.Gateway.Delete(ctx, id)
		return respond(http.StatusGone, "apigw: unknown connection")
	}
	if err != nil {
		h.hooks().Error(nil, fmt.Errorf("apigw: looking up connection %q: %w", id, err))
		return respond(http.StatusInternalServerError, "apigw: could not look up the connection")
	}
	h.hooks().Message(h.peer(ctx, c, false), d)
	return events.APIGatewayProxyResponse{StatusCode: http.StatusOK}
}

func (h *Handler) disconnect(ctx context.Context, ev *events.APIGatewayWebsocketProxyRequest) events.APIGatewayProxyResponse {
	rc := &ev.RequestContext
	c, err := h.Registry.Get(ctx, rc.ConnectionID)
	if err != nil && !errors.Is(err, edge.ErrNotFound) {
		h.hooks().Error(nil, fmt.Errorf("apigw: looking up connection %q: %w", rc.ConnectionID, err))
	}
	if err != nil {
		// Removed already (its 410 was seen first) or never recorded:
		// the peer is rebuilt from the event alone.
		c = edge.Conn{ID: rc.ConnectionID, Namespace: "/" + rc.Stage}
	}
	code := int(rc.DisconnectStatusCode)
	if code == 0 {
		code = 1005 // no status received
	}
	var reason string
	if rc.DisconnectReason != nil {
		reason = *rc.DisconnectReason
	}
	p := h.peer(ctx, c, false)
	p.gone = true
	h.hooks().Close(p, code, reason)
	if err := h.Registry.Remove(ctx, c.ID); err != nil {
		h.hooks().Error(p, fmt.Errorf("apigw: forgetting connection %q: %w", c.ID, err))
		return respond(http.StatusInternalServerError, "apigw: could not forget the connection")
	}
	return events.APIGatewayProxyResponse{StatusCode: http.StatusOK}
}

// refusal turns a refused upgrade into the $connect response: a *edge.Reject
// with its own status, headers and body, any other error 403 Forbidden.
func refusal(err error) events.APIGatewayProxyResponse {
	var rej *edge.Reject
	if !errors.As(err, &rej) {
		return respond(http.StatusForbidden, http.StatusText(http.StatusForbidden))
	}
	resp := respond(rej.StatusCode(), rej.Text())
	for k, vs := range rej.Header {
		if len(vs) == 0 {
			continue
		}
		resp.Headers[k] = strings.Join(vs, ", ")
		resp.MultiValueHeaders[k] = vs
	}
	return resp
}

// respond returns a response with a plain text body.
func respond(status int, body string) events.APIGatewayProxyResponse {
	return events.APIGatewayProxyResponse{
		StatusCode:        status,
		Headers:           map[string]string{"Content-Type": "text/plain; charset=utf-8"},
		MultiValueHeaders: map[string][]string{"Content-Type": {"text/plain; charset=utf-8"}},
		Body:              body,
	}
}
