package apigw

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi/types"

	"github.com/edgesync/edgesync/edge"
)

// Defaults of GatewayOptions.
const (
	// DefaultConcurrency is how many posts a Gateway makes at once when
	// GatewayOptions.Concurrency is 0.
	DefaultConcurrency = 32
	// DefaultPostTimeout is the deadline of one API call when
	// GatewayOptions.PostTimeout is 0.
	DefaultPostTimeout = 3 * time.Second
	// DefaultMaxRetries is how many times a throttled call is retried when
	// GatewayOptions.MaxRetries is 0.
	DefaultMaxRetries = 3
)

// EndpointEnv is the environment variable that NewGateway reads the
// management endpoint from when GatewayOptions.Endpoint is empty. The local
// API Gateway emulator (apigw/emulator) sets it in the function's
// environment, where the endpoint learned from the events would not reach
// it.
const EndpointEnv = "EDGESYNC_APIGW_ENDPOINT"

// MaxPayload is the largest body API Gateway accepts in one post to a
// connection, in bytes: 128 KB.
const MaxPayload = 128 * 1024

// The backoff between retries of a throttled call: before retry n (from 0)
// the Gateway waits a random time in [0, min(retryCap, retryBase<<n)) ("full
// jitter").
const (
	retryBase = 50 * time.Millisecond
	retryCap  = 2 * time.Second
)

var (
	// ErrGone is wrapped by the error of Post, Delete and Connection when
	// API Gateway answers 410 Gone: the connection closed, or is still
	// being established. The Gateway has removed it from the Registry by
	// then, unless it connected less than 30 seconds ago (see Gateway).
	ErrGone = errors.New("apigw: connection gone")

	// ErrPayloadTooLarge is wrapped by the error of Deliver and Post for a
	// body larger than MaxPayload once encoded (see Payload), which is
	// then not posted, and for a post that API Gateway refused with 413.
	ErrPayloadTooLarge = errors.New("apigw: payload too large")

	// ErrNoEndpoint is wrapped by the error of every call made before the
	// Gateway knows its management endpoint: GatewayOptions.Endpoint was
	// empty and SetEndpoint was not called yet.
	ErrNoEndpoint = errors.New("apigw: no management endpoint")
)

// GatewayOptions configure a Gateway.
type GatewayOptions struct {
	// Registry holds the connections and their subscriptions. Required.
	Registry edge.Registry

	// Endpoint is the management endpoint of the WebSocket API:
	// https://{api-id}.execute-api.{region}.amazonaws.com/{stage}, or a
	// custom domain with its base path. "" means the value of the
	// environment variable EndpointEnv, and when that is empty too, the
	// endpoint is learned later, through SetEndpoint.
	Endpoint string

	// Config is the AWS configuration: region and credentials. nil means
	// config.LoadDefaultConfig, which reads them from the environment as a
	// Lambda function has it. The Gateway does its own retries and uses
	// its own HTTP client (HTTPClient): the Config's Retryer and
	// HTTPClient are not used.
	Config *aws.Config

	// Concurrency is how many posts the Gateway makes at once, across all
	// the Delivers in progress (a Hub runs several: Options.GatewayWorkers),
	// so that its connection pool fits them. 0 means DefaultConcurrency.
	Concurrency int

	// PostTimeout is the deadline of every single API call, retries
	// apart. Without one, a Lambda function in a VPC without a route to
	// API Gateway would hang until its own timeout. 0 means
	// DefaultPostTimeout.
	PostTimeout time.Duration

	// MaxRetries is how many times a throttled call (429) is retried, with
	// exponential backoff and full jitter, within the caller's context. 0
	// means DefaultMaxRetries; a negative value means no retry.
	MaxRetries int

	// HTTPClient makes the API calls. nil means a client of the Gateway's
	// own whose Transport keeps up to Concurrency idle connections to the
	// endpoint, so that posts reuse connections instead of making a TLS
	// handshake each.
	HTTPClient *http.Client

	// OnGone, if not nil, is called with the id of a connection that API
	// Gateway answered 410 Gone for, once the Gateway has removed it from
	// the Registry. It is called from the goroutines of Deliver, possibly
	// at once, and should return quickly.
	OnGone func(id string)
}

// Gateway is an edge.Gateway whose peers are the connections of an API
// Gateway WebSocket API: it posts each message to them with the management
// API (PostToConnection). A Gateway is safe for concurrent use.
//
// # Binary data
//
// API Gateway speaks only text to WebSocket clients (a client that sends a
// binary frame is closed with status 1003), and documents nothing for binary
// posts. So the Gateway posts binary Data as its standard, padded base64
// (encoding/base64.StdEncoding), which the client receives as a text frame,
// and text Data as it is. A client that expects binary messages on a topic
// decodes them from base64; Payload returns what is posted for a Data.
//
// # Gone connections
//
// A 410 Gone answer means the connection closed without the Registry being
// told yet (a $disconnect event still on its way, or one that never came).
// The Gateway then removes the connection's subscriptions from the Registry
// and keeps its record for one more minute, so that the $disconnect that
// normally follows still finds the peer's namespace and attributes; then
// the record expires. It calls GatewayOptions.OnGone. For Deliver this is
// normal and not an error.
//
// API Gateway also answers 410 for a connection whose $connect has not
// returned yet, whose peer may have subscribed in Hooks.Open already. So a
// connection that connected (edge.Conn.ConnectedAt) less than 30 seconds
// ago, longer than API Gateway lets $connect run, is kept: only the post is
// lost.
type Gateway struct {
	reg        edge.Registry
	cfg        aws.Config
	httpClient *http.Client
	conc       int
	timeout    time.Duration
	retries    int
	onGone     func(id string)
	sem        chan struct{} // the posts in flight, across every Deliver

	api     atomic.Pointer[gatewayAPI] // nil until the endpoint is known
	mu      sync.Mutex                 // serializes SetEndpoint
	invalid string                     // the last endpoint SetEndpoint ignored, for ErrNoEndpoint's message
}

// gatewayAPI is the client of one management endpoint.
type gatewayAPI struct {
	endpoint string
	client   *apigatewaymanagementapi.Client
}

var (
	_ edge.PeerGateway     = (*Gateway)(nil)
	_ edge.RegistryGateway = (*Gateway)(nil)
)

// Registry returns the Registry of the Gateway's connections, for
// Hub.Presence.
func (g *Gateway) Registry() edge.Registry { return g.reg }

// NewGateway returns a Gateway configured by opts. It loads the default AWS
// configuration when opts.Config is nil, and returns an error when that
// fails, when no region is configured, or when an option is invalid.
func NewGateway(ctx context.Context, opts GatewayOptions) (*Gateway, error) {
	if opts.Registry == nil {
		return nil, errors.New("apigw: GatewayOptions.Registry is required")
	}
	if opts.Concurrency < 0 {
		return nil, fmt.Errorf("apigw: GatewayOptions.Concurrency is %d, want 0 or more", opts.Concurrency)
	}
	if opts.PostTimeout < 0 {
		return nil, fmt.Errorf("apigw: GatewayOptions.PostTimeout is %v, want 0 or more", opts.PostTimeout)
	}
	g := &Gateway{
		reg:        opts.Registry,
		httpClient: opts.HTTPClient,
		conc:       opts.Concurrency,
		timeout:    opts.PostTimeout,
		retries:    opts.MaxRetries,
		onGone:     opts.OnGone,
	}
	if g.conc == 0 {
		g.conc = DefaultConcurrency
	}
	g.sem = make(chan struct{}, g.conc)
	if g.timeout == 0 {
		g.timeout = DefaultPostTimeout
	}
	switch {
	case g.retries == 0:
		g.retries = DefaultMaxRetries
	case g.retries < 0:
		g.retries = 0
	}
	if opts.Config != nil {
		g.cfg = *opts.Config
	} else {
		cfg, err := config.LoadDefaultConfig(ctx)
		if err != nil {
			return nil, fmt.Errorf("apigw: loading the AWS configuration: %w", err)
		}
		g.cfg = cfg
	}
	if g.cfg.Region == "" {
		return nil, errors.New("apigw: no AWS region: set GatewayOptions.Config.Region or AWS_REGION")
	}
	if g.httpClient == nil {
		g.httpClient = &http.Client{Transport: gatewayTransport(g.conc)}
	}
	if opts.Endpoint == "" {
		opts.Endpoint = os.Getenv(EndpointEnv)
	}
	if opts.Endpoint != "" {
		endpoint, err := cleanEndpoint(opts.Endpoint)
		if err != nil {
			return nil, fmt.Errorf("apigw: GatewayOptions.Endpoint: %w", err)
		}
		g.api.Store(g.newAPI(endpoint))
	}
	return g, nil
}

// gatewayTransport returns a Transport like http.DefaultTransport that keeps
// up to conc idle connections per host.
func gatewayTransport(conc int) *http.Transport {
	t, ok := http.DefaultTransport.(*http.Transport)
	if ok {
		t = t.Clone()
	} else {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		t = &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           d.DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          100,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		}
	}
	t.MaxIdleConnsPerHost = conc
	if t.MaxIdleConns != 0 && t.MaxIdleConns < conc {
		t.MaxIdleConns = conc
	}
	return t
}

// cleanEndpoint checks that s is an absolute http or https URL and returns
// it without a trailing slash.
func cleanEndpoint(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("endpoint %q: %w", s, err)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("endpoint %q is not an http or https URL without query", s)
	}
	return strings.TrimRight(s, "/"), nil
}

// newAPI builds the client of endpoint. The SDK does not retry: the
// Gateway does (see call).
func (g *Gateway) newAPI(endpoint string) *gatewayAPI {
	client := apigatewaymanagementapi.NewFromConfig(g.cfg, func(o *apigatewaymanagementapi.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.HTTPClient = g.httpClient
		o.Retryer = aws.NopRetryer{}
		o.RetryMaxAttempts = 1
	})
	return &gatewayAPI{endpoint: endpoint, client: client}
}

// SetEndpoint sets the management endpoint when the Gateway has none yet,
// and is a no-op otherwise. A Lambda handler calls it with what it learns
// from its first event: "https://" + domainName + "/" + stage. That is
// right for the API's own domain name; behind a custom domain, whose base
// path need not be the stage, give GatewayOptions.Endpoint instead. An
// endpoint that is not an http or https URL is ignored, and the calls keep failing
// with ErrNoEndpoint, saying which endpoint was ignored. SetEndpoint is safe
// for concurrent use.
func (g *Gateway) SetEndpoint(endpoint string) {
	if g.api.Load() != nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.api.Load() != nil {
		return
	}
	clean, err := cleanEndpoint(endpoint)
	if err != nil {
		g.invalid = endpoint
		return
	}
	g.api.Store(g.newAPI(clean))
}

// Endpoint returns the management endpoint, or "" when there is none yet.
func (g *Gateway) Endpoint() string {
	if a := g.api.Load(); a != nil {
		return a.endpoint
	}
	return ""
}

// client returns the API client, or an error wrapping ErrNoEndpoint.
func (g *Gateway) client() (*gatewayAPI, error) {
	if a := g.api.Load(); a != nil {
		return a, nil
	}
	g.mu.Lock()
	invalid := g.invalid
	g.mu.Unlock()
	if invalid != "" {
		return nil, fmt.Errorf("%w (SetEndpoint ignored %q: not an http or https URL)", ErrNoEndpoint, invalid)
	}
	return nil, ErrNoEndpoint
}

// Payload returns the body the Gateway posts for d: its bytes for text, and
// their standard, padded base64 for binary data, since API Gateway clients
// receive text frames only.
func Payload(d edge.Data) []byte {
	if !d.Binary {
		return d.Bytes
	}
	b := make([]byte, base64.StdEncoding.EncodedLen(len(d.Bytes)))
	base64.StdEncoding.Encode(b, d.Bytes)
	return b
}

// payload returns Payload(d), or an error for invalid text and for a body
// larger than MaxPayload.
func payload(d edge.Data) ([]byte, error) {
	if !d.Binary && !utf8.Valid(d.Bytes) {
		return nil, fmt.Errorf("apigw: %w", edge.ErrInvalidText)
	}
	if d.Binary {
		if n := base64.StdEncoding.EncodedLen(len(d.Bytes)); n > MaxPayload {
			return nil, fmt.Errorf("apigw: binary data of %d bytes is %d bytes in base64, over the limit of %d: %w",
				len(d.Bytes), n, MaxPayload, ErrPayloadTooLarge)
		}
	} else if len(d.Bytes) > MaxPayload {
		return nil, fmt.Errorf("apigw: text data of %d bytes is over the limit of %d: %w",
			len(d.Bytes), MaxPayload, ErrPayloadTooLarge)
	}
	return Payload(d), nil
}

// Deliver posts msg to every connection of the Registry subscribed to
// msg.Topic in msg.Namespace ("" means every namespace), except the
// connection with id except. It streams the subscribers from the Registry,
// makes up to GatewayOptions.Concurrency posts at once, and returns when
// every post is done.
//
// Connections that are gone (410) are removed from the Registry and are not
// an error. The error of the other failures says how many posts failed and
// wraps the first failure; Deliver also fails, before any post, with
// ErrNoEndpoint, ErrPayloadTooLarge or edge.ErrInvalidText.
func (g *Gateway) Deliver(ctx context.Context, msg edge.Message, except string) error {
	api, err := g.client()
	if err != nil {
		return err
	}
	body, err := payload(msg.Data)
	if err != nil {
		return err
	}
	var (
		sem     = g.sem
		wg      sync.WaitGroup
		posts   int
		stopped bool // by ctx, before the last subscriber
		failed  atomic.Int64
		once    sync.Once
		first   error
	)
	listErr := g.reg.Subscribers(ctx, msg.Namespace, msg.Topic, func(id string) bool {
		if id == except {
			return true
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			stopped = true
			return false
		}
		posts++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := g.post(ctx, api, id, body); err != nil {
				failed.Add(1)
				once.Do(func() { first = err })
			}
		}()
		return true
	})
	wg.Wait()
	var errs []error
	if listErr != nil {
		errs = append(errs, fmt.Errorf("apigw: listing the subscribers of %q: %w", msg.Topic, listErr))
	} else if stopped {
		errs = append(errs, fmt.Errorf("apigw: delivering to the subscribers of %q: %w", msg.Topic, ctx.Err()))
	}
	if n := failed.Load(); n > 0 {
		errs = append(errs, fmt.Errorf("apigw: %d of %d posts to the subscribers of %q failed, the first: %w", n, posts, msg.Topic, first))
	}
	return errors.Join(errs...)
}

// Post posts d to the connection id, with the same encoding, size limit,
// deadline and retries as Deliver. When the connection is gone (410), Post
// removes it from the Registry (see Gateway) and returns an error wrapping
// ErrGone.
func (g *Gateway) Post(ctx context.Context, id string, d edge.Data) error {
	api, err := g.client()
	if err != nil {
		return err
	}
	body, err := payload(d)
	if err != nil {
		return err
	}
	gone, err := g.post(ctx, api, id, body)
	if gone && err == nil {
		return fmt.Errorf("apigw: posting to %q: %w", id, ErrGone)
	}
	return err
}

// post posts body to id. gone reports a 410, after which the connection
// has been removed; err is then only the Registry's failure to remove it.
func (g *Gateway) post(ctx context.Context, api *gatewayAPI, id string, body []byte) (gone bool, err error) {
	err = g.call(ctx, func(ctx context.Context) error {
		_, err := api.client.PostToConnection(ctx, &apigatewaymanagementapi.PostToConnectionInput{
			ConnectionId: aws.String(id),
			Data:         body,
		})
		return err
	})
	if err == nil {
		return false, nil
	}
	if isGone(err) {
		return true, g.forget(ctx, id)
	}
	if isTooLarge(err) {
		return false, fmt.Errorf("apigw: posting to %q: %w: %w", id, ErrPayloadTooLarge, err)
	}
	return false, fmt.Errorf("apigw: posting to %q: %w", id, err)
}

// SendTo posts d to the connection id if the Registry holds it, for
// Hub.SendTo. It returns an error wrapping edge.ErrNotFound when the Registry
// does not hold the connection, and nil when API Gateway answers that it is
// gone: the peer no longer exists, which is not the sender's error.
func (g *Gateway) SendTo(ctx context.Context, id string, d edge.Data) error {
	if _, err := g.reg.Get(ctx, id); err != nil {
		return fmt.Errorf("apigw: send to %q: %w", id, err)
	}
	if err := g.Post(ctx, id, d); err != nil && !errors.Is(err, ErrGone) {
		return err
	}
	return nil
}

// Delete closes the connection id (DeleteConnection). API Gateway then sends
// the $disconnect event, whose handling removes the connection from the
// Registry. When the connection is gone already (410), Delete removes it from
// the Registry itself and returns an error wrapping ErrGone.
func (g *Gateway) Delete(ctx context.Context, id string) error {
	api, err := g.client()
	if err != nil {
		return err
	}
	err = g.call(ctx, func(ctx context.Context) error {
		_, err := api.client.DeleteConnection(ctx, &apigatewaymanagementapi.DeleteConnectionInput{ConnectionId: aws.String(id)})
		return err
	})
	return g.goneOr(ctx, "deleting", id, err)
}

// ConnInfo is what API Gateway tells of a connection.
type ConnInfo struct {
	ConnectedAt  time.Time // when the connection was established
	LastActiveAt time.Time // when it was last active
	SourceIP     string    // the source IP address of its TCP connection
	UserAgent    string    // the user agent of its client
}

// Connection returns what API Gateway knows of the connection id
// (GetConnection). When the connection is gone (410), Connection removes it
// from the Registry and returns an error wrapping ErrGone.
func (g *Gateway) Connection(ctx context.Context, id string) (ConnInfo, error) {
	api, err := g.client()
	if err != nil {
		return ConnInfo{}, err
	}
	var out *apigatewaymanagementapi.GetConnectionOutput
	err = g.call(ctx, func(ctx context.Context) error {
		var err error
		out, err = api.client.GetConnection(ctx, &apigatewaymanagementapi.GetConnectionInput{ConnectionId: aws.String(id)})
		return err
	})
	if err != nil {
		return ConnInfo{}, g.goneOr(ctx, "getting", id, err)
	}
	var info ConnInfo
	if out.ConnectedAt != nil {
		info.ConnectedAt = *out.ConnectedAt
	}
	if out.LastActiveAt != nil {
		info.LastActiveAt = *out.LastActiveAt
	}
	if out.Identity != nil {
		info.SourceIP = aws.ToString(out.Identity.SourceIp)
		info.UserAgent = aws.ToString(out.Identity.UserAgent)
	}
	return info, nil
}

// goneOr returns nil for a nil err, the ErrGone error (with any failure to
// forget id) for a 410, and err wrapped otherwise.
func (g *Gateway) goneOr(ctx context.Context, doing, id string, err error) error {
	switch {
	case err == nil:
		return nil
	case isGone(err):
		return errors.Join(fmt.Errorf("apigw: %s %q: %w", doing, id, ErrGone), g.forget(ctx, id))
	default:
		return fmt.Errorf("apigw: %s %q: %w", doing, id, err)
	}
}

// connectGrace is how long after it connected a connection is kept when API
// Gateway answers 410 Gone for it: until $connect has returned, API Gateway
// refuses posts with 410, and its integration timeout is 29 seconds.
const connectGrace = 30 * time.Second

// goneLinger is how long the record of a gone connection is kept, without
// its subscriptions, for the $disconnect event that API Gateway sends
// shortly after, which reads the peer's namespace and attributes from it.
const goneLinger = time.Minute

// forget removes the subscriptions of the gone connection id from the
// Registry, keeping its record for goneLinger, and calls OnGone; unless it
// connected less than connectGrace ago and may be in its $connect.
func (g *Gateway) forget(ctx context.Context, id string) error {
	c, err := g.reg.Get(ctx, id)
	switch {
	case errors.Is(err, edge.ErrNotFound):
		return nil // forgotten already
	case err != nil:
		return fmt.Errorf("apigw: looking up the gone connection %q: %w", id, err)
	case time.Since(c.ConnectedAt) < connectGrace:
		return nil
	}
	// Add replaces the record, and with it every subscription.
	c.ExpiresAt = time.Now().Add(goneLinger)
	if err := g.reg.Add(ctx, c); err != nil {
		return fmt.Errorf("apigw: removing the gone connection %q: %w", id, err)
	}
	if g.onGone != nil {
		g.onGone(id)
	}
	return nil
}

// call runs op with a deadline of PostTimeout, and again after a backoff
// while it is throttled, up to MaxRetries times within ctx.
func (g *Gateway) call(ctx context.Context, op func(ctx context.Context) error) error {
	for retry := 0; ; retry++ {
		opCtx, cancel := context.WithTimeout(ctx, g.timeout)
		err := op(opCtx)
		cancel()
		if err == nil || !isThrottled(err) {
			return err
		}
		if retry >= g.retries {
			return fmt.Errorf("throttled, gave up after %d retries: %w", retry, err)
		}
		ceiling := min(retryCap, retryBase<<retry)
		t := time.NewTimer(rand.N(ceiling) + 1)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("throttled, waiting to retry: %w", errors.Join(ctx.Err(), err))
		}
	}
}

// statusCoder is the interface of the SDK's HTTP response errors.
type statusCoder interface{ HTTPStatusCode() int }

// isGone reports whether err is API Gateway's 410 Gone.
func isGone(err error) bool {
	var gone *types.GoneException
	return errors.As(err, &gone) || httpStatus(err) == http.StatusGone
}

// isThrottled reports whether err is API Gateway's 429 Too Many Requests.
func isThrottled(err error) bool {
	var limit *types.LimitExceededException
	return errors.As(err, &limit) || httpStatus(err) == http.StatusTooManyRequests
}

// isTooLarge reports whether err is API Gateway's 413 Payload Too Large.
func isTooLarge(err error) bool {
	var large *types.PayloadTooLargeException
	return errors.As(err, &large) || httpStatus(err) == http.StatusRequestEntityTooLarge
}

// httpStatus returns the HTTP status of the response err came with, or 0.
func httpStatus(err error) int {
	var sc statusCoder
	if errors.As(err, &sc) {
		return sc.HTTPStatusCode()
	}
	return 0
}
