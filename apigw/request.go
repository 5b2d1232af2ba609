package apigw

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/aws/aws-lambda-go/events"
)

// eventKey is the context key under which the event travels with the
// request given to Hooks.Upgrade.
type eventKey struct{}

// Event returns the API Gateway event that the request given to
// Hooks.Upgrade was rebuilt from, and whether r is such a request. The
// event's RequestContext holds what the request cannot: the connection id,
// the stage, the identity and the authorizer's context.
func Event(r *http.Request) (events.APIGatewayWebsocketProxyRequest, bool) {
	ev, ok := r.Context().Value(eventKey{}).(*events.APIGatewayWebsocketProxyRequest)
	if !ok {
		return events.APIGatewayWebsocketProxyRequest{}, false
	}
	return *ev, true
}

// Authorizer returns the context that a Lambda REQUEST authorizer returned
// for the connection (requestContext.authorizer: the authorizer's context
// entries, and principalId), or nil when there was no authorizer. Upgrade
// can make its claims peer attributes:
//
//	claims := apigw.Authorizer(r)
//	user, _ := claims["user"].(string)
//	return edge.Accept{Attrs: map[string]string{"user": user}}, nil
func Authorizer(r *http.Request) map[string]any {
	ev, ok := Event(r)
	if !ok {
		return nil
	}
	m, _ := ev.RequestContext.Authorizer.(map[string]any)
	return m
}

// connectRequest rebuilds the client's upgrade request from a $connect
// event: method GET, the URL the client connected to (the event's domain
// name, "/" and the stage, the query string), its headers and its source
// address. The event rides in the request's context (see Event).
func connectRequest(ctx context.Context, ev *events.APIGatewayWebsocketProxyRequest) *http.Request {
	rc := &ev.RequestContext
	header := make(http.Header, len(ev.Headers))
	for k, vs := range ev.MultiValueHeaders {
		for _, v := range vs {
			header.Add(k, v)
		}
	}
	for k, v := range ev.Headers {
		if _, ok := header[http.CanonicalHeaderKey(k)]; !ok {
			header.Set(k, v)
		}
	}
	query := url.Values{}
	for k, vs := range ev.MultiValueQueryStringParameters {
		query[k] = append(query[k], vs...)
	}
	for k, v := range ev.QueryStringParameters {
		if _, ok := query[k]; !ok {
			query.Set(k, v)
		}
	}
	scheme := "https"
	if p := header.Get("X-Forwarded-Proto"); p == "http" {
		scheme = "http"
	}
	host := rc.DomainName
	if host == "" {
		host = header.Get("Host")
	}
	u := &url.URL{Scheme: scheme, Host: host, Path: "/" + strings.TrimPrefix(rc.Stage, "/"), RawQuery: query.Encode()}
	r := (&http.Request{
		Method:     http.MethodGet,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     header,
		Host:       host,
		RemoteAddr: net.JoinHostPort(rc.Identity.SourceIP, "0"),
		RequestURI: u.RequestURI(),
	}).WithContext(context.WithValue(ctx, eventKey{}, ev))
	return r
}
