package emulator

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

// Route keys and event types API Gateway uses.
const (
	routeConnect    = "$connect"
	routeDisconnect = "$disconnect"
	routeDefault    = "$default"

	eventConnect    = "CONNECT"
	eventMessage    = "MESSAGE"
	eventDisconnect = "DISCONNECT"
)

// idBytes is the length of API Gateway's connection, message and request
// ids: 11 bytes, 16 characters of standard base64 ending in "=".
const idBytes = 11

// newID returns a random id in API Gateway's form, e.g. "L0SM9cOFvHcCIhw=".
func newID() string {
	var b [idBytes]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// validID reports whether id has the form of an API Gateway connection id.
func validID(id string) bool {
	b, err := base64.StdEncoding.Strict().DecodeString(id)
	return err == nil && len(b) == idBytes
}

// newUUID returns a random version 4 UUID, the form of Lambda request ids.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// newTraceID returns an X-Ray trace id, "1-{8 hex digits of time}-{24 hex}".
func newTraceID(now time.Time) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("1-%08x-%s", now.Unix(), hex.EncodeToString(b[:]))
}

// requestTimeLayout is the form of requestContext.requestTime,
// e.g. "20/Jan/2024:11:55:08 +0000".
const requestTimeLayout = "02/Jan/2006:15:04:05 -0700"

// isoLayout is the form of the management API's timestamps.
const isoLayout = "2006-01-02T15:04:05.000Z"

// requestContext returns the requestContext API Gateway sends for one event
// of c, with a fresh request id.
func (c *conn) requestContext(routeKey, eventType string, now time.Time) events.APIGatewayWebsocketProxyRequestContext {
	rid := newID()
	rc := events.APIGatewayWebsocketProxyRequestContext{
		RouteKey:          routeKey,
		EventType:         eventType,
		ExtendedRequestID: rid,
		RequestTime:       now.UTC().Format(requestTimeLayout),
		MessageDirection:  "IN",
		Stage:             c.e.opts.Stage,
		ConnectedAt:       c.connectedAt.UnixMilli(),
		RequestTimeEpoch:  now.UnixMilli(),
		Identity: events.APIGatewayRequestIdentity{
			SourceIP:  c.sourceIP,
			UserAgent: c.userAgent,
		},
		RequestID:    rid,
		DomainName:   c.domainName,
		ConnectionID: c.id,
		APIID:        c.e.opts.APIID,
	}
	if c.authorizer != nil { // never a nil map, which would be "authorizer": null
		rc.Authorizer = c.authorizer
	}
	return rc
}

// connectEvent returns the $connect event for the upgrade request r.
func (c *conn) connectEvent(r *http.Request, now time.Time) events.APIGatewayWebsocketProxyRequest {
	h := r.Header.Clone()
	h.Set("Host", r.Host)
	h.Set("X-Amzn-Trace-Id", "Root="+newTraceID(now))
	if prior := r.Header.Values("X-Forwarded-For"); len(prior) > 0 {
		h.Set("X-Forwarded-For", strings.Join(prior, ", ")+", "+c.sourceIP)
	} else {
		h.Set("X-Forwarded-For", c.sourceIP)
	}
	h.Set("X-Forwarded-Port", localPort(r))
	h.Set("X-Forwarded-Proto", scheme(r))

	ev := events.APIGatewayWebsocketProxyRequest{
		Headers:           make(map[string]string, len(h)),
		MultiValueHeaders: make(map[string][]string, len(h)),
		RequestContext:    c.requestContext(routeConnect, eventConnect, now),
	}
	for k, vs := range h {
		ev.Headers[k] = vs[len(vs)-1]
		ev.MultiValueHeaders[k] = vs
	}
	if q := r.URL.Query(); len(q) > 0 {
		ev.QueryStringParameters = make(map[string]string, len(q))
		ev.MultiValueQueryStringParameters = make(map[string][]string, len(q))
		for k, vs := range q {
			ev.QueryStringParameters[k] = vs[len(vs)-1]
			ev.MultiValueQueryStringParameters[k] = vs
		}
	}
	return ev
}

// messageEvent returns the event for a message body routed to routeKey.
func (c *conn) messageEvent(routeKey, body string, now time.Time) events.APIGatewayWebsocketProxyRequest {
	rc := c.requestContext(routeKey, eventMessage, now)
	rc.MessageID = newID()
	return events.APIGatewayWebsocketProxyRequest{RequestContext: rc, Body: body}
}

// disconnectEvent returns the $disconnect event. API Gateway sends these
// four headers on $disconnect, three of them empty.
func (c *conn) disconnectEvent(code int, reason string, now time.Time) events.APIGatewayWebsocketProxyRequest {
	rc := c.requestContext(routeDisconnect, eventDisconnect, now)
	rc.DisconnectStatusCode = int64(code)
	rc.DisconnectReason = &reason
	h := map[string]string{"Host": c.domainName, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": ""}
	mh := make(map[string][]string, len(h))
	for k, v := range h {
		mh[k] = []string{v}
	}
	return events.APIGatewayWebsocketProxyRequest{Headers: h, MultiValueHeaders: mh, RequestContext: rc}
}

// selectRoute evaluates the route selection expression on a message body:
// a JSON object whose selected value is a string naming a custom route goes
// to that route; anything else goes to $default.
func (e *Emulator) selectRoute(body []byte) string {
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return routeDefault
	}
	for _, key := range e.routePath {
		obj, ok := v.(map[string]any)
		if !ok {
			return routeDefault
		}
		v = obj[key]
	}
	s, ok := v.(string)
	if !ok {
		return routeDefault
	}
	for _, r := range e.opts.Routes {
		if r == s {
			return r
		}
	}
	return routeDefault
}

// withLambdaContext gives an in-process handler what lambdacontext reports
// on Lambda.
func withLambdaContext(ctx context.Context, arn string) context.Context {
	return lambdacontext.NewContext(ctx, &lambdacontext.LambdaContext{
		AwsRequestID:       newUUID(),
		InvokedFunctionArn: arn,
	})
}

// remoteIP returns the client's IP address.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// localPort returns the port the client connected to.
func localPort(r *http.Request) string {
	if addr, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if _, port, err := net.SplitHostPort(addr.String()); err == nil {
			return port
		}
	}
	if _, port, err := net.SplitHostPort(r.Host); err == nil {
		return port
	}
	if r.TLS != nil {
		return "443"
	}
	return strconv.Itoa(80)
}

func scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}
