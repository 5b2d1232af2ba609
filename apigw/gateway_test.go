package apigw_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi/types"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/apigw"
	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

const testTimeout = 20 * time.Second

// fakeAPI is a stand-in for the API Gateway management API of one stage,
// answering as AWS does: POST, GET and DELETE /{stage}/@connections/{id},
// errors with the X-Amzn-ErrorType header and a {"message": ...} body.
type fakeAPI struct {
	srv      *httptest.Server
	stage    string
	closing  chan struct{} // closed when the test ends
	requests atomic.Int64  // requests to a connection, whatever their answer
	newConns atomic.Int64  // TCP connections accepted
	inflight atomic.Int64
	maxIn    atomic.Int64 // the most requests in flight at once

	// hook, when set, runs before the request is answered; it returns
	// true when it has answered.
	hook atomic.Pointer[func(w http.ResponseWriter, r *http.Request, id string) bool]

	mu        sync.Mutex
	posts     map[string]int    // posts answered 200, by connection
	last      map[string]string // the last body posted, by connection
	gone      map[string]string // connections that are gone: "typed" or "bare" 410
	throttled map[string]int    // how many more requests to a connection get 429
	bare429   bool              // a 429 without X-Amzn-ErrorType
}

func newFakeAPI(t testing.TB, stage string) *fakeAPI {
	t.Helper()
	f := &fakeAPI{
		stage:     stage,
		closing:   make(chan struct{}),
		posts:     make(map[string]int),
		last:      make(map[string]string),
		gone:      make(map[string]string),
		throttled: make(map[string]int),
	}
	mux := http.NewServeMux()
	prefix := "/" + stage + "/@connections/{id}"
	mux.HandleFunc("POST "+prefix, f.serve(f.post))
	mux.HandleFunc("GET "+prefix, f.serve(f.get))
	mux.HandleFunc("DELETE "+prefix, f.serve(f.delete))
	f.srv = httptest.NewUnstartedServer(mux)
	f.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.newConns.Add(1)
		}
	}
	f.srv.Start()
	t.Cleanup(func() {
		close(f.closing)
		f.srv.Close()
	})
	return f
}

// endpoint is the management endpoint of the stage.
func (f *fakeAPI) endpoint() string { return f.srv.URL + "/" + f.stage }

func (f *fakeAPI) serve(answer func(w http.ResponseWriter, r *http.Request, id string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := f.inflight.Add(1)
		defer f.inflight.Add(-1)
		for {
			m := f.maxIn.Load()
			if n <= m || f.maxIn.CompareAndSwap(m, n) {
				break
			}
		}
		f.requests.Add(1)
		id := r.PathValue("id")
		if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 Credential=AKIDTEST/") {
			awsError(w, http.StatusForbidden, "ForbiddenException", "Forbidden")
			return
		}
		if hook := f.hook.Load(); hook != nil && (*hook)(w, r, id) {
			return
		}
		f.mu.Lock()
		gone := f.gone[id]
		throttle := f.throttled[id] > 0
		if throttle {
			f.throttled[id]--
		}
		bare429 := f.bare429
		f.mu.Unlock()
		switch {
		case gone == "typed":
			awsError(w, http.StatusGone, "GoneException", "")
		case gone == "bare":
			w.WriteHeader(http.StatusGone)
		case throttle && bare429:
			w.WriteHeader(http.StatusTooManyRequests)
		case throttle:
			awsError(w, http.StatusTooManyRequests, "LimitExceededException", "Rate exceeded")
		default:
			answer(w, r, id)
		}
	}
}

func awsError(w http.ResponseWriter, status int, typ, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-ErrorType", typ)
	w.WriteHeader(status)
	var msg any
	if message != "" {
		msg = message
	}
	json.NewEncoder(w).Encode(map[string]any{"message": msg})
}

func (f *fakeAPI) post(w http.ResponseWriter, r *http.Request, id string) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	if len(body) > apigw.MaxPayload {
		awsError(w, http.StatusRequestEntityTooLarge, "PayloadTooLargeException", "Message too long")
		return
	}
	f.mu.Lock()
	f.posts[id]++
	f.last[id] = string(body)
	f.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

var (
	testConnectedAt  = time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	testLastActiveAt = time.Date(2025, 3, 1, 10, 5, 30, 0, time.UTC)
)

func (f *fakeAPI) get(w http.ResponseWriter, r *http.Request, id string) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"connectedAt":  testConnectedAt.Format(time.RFC3339),
		"lastActiveAt": testLastActiveAt.Format(time.RFC3339),
		"identity":     map[string]string{"sourceIp": "192.0.2.7", "userAgent": "test-agent/1.0"},
	})
}

func (f *fakeAPI) delete(w http.ResponseWriter, r *http.Request, id string) {
	f.mu.Lock()
	f.gone[id] = "typed"
	f.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeAPI) setHook(hook func(w http.ResponseWriter, r *http.Request, id string) bool) {
	f.hook.Store(&hook)
}

// setGone makes API Gateway answer 410 for id: with a GoneException when
// typed, with a bare 410 otherwise.
func (f *fakeAPI) setGone(id string, typed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if typed {
		f.gone[id] = "typed"
	} else {
		f.gone[id] = "bare"
	}
}

func (f *fakeAPI) throttle(id string, times int, bare bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.throttled[id] = times
	f.bare429 = bare
}

// postsTo returns how many posts to id were answered 200, and the last body.
func (f *fakeAPI) postsTo(id string) (int, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.posts[id], f.last[id]
}

func testConfig() *aws.Config {
	return &aws.Config{
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "SECRETTEST", ""),
	}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// newGateway returns a Gateway on reg posting to f, with opts as set by
// configure.
func newGateway(t testing.TB, reg edge.Registry, f *fakeAPI, configure func(*apigw.GatewayOptions)) *apigw.Gateway {
	t.Helper()
	opts := apigw.GatewayOptions{Registry: reg, Config: testConfig()}
	if f != nil {
		opts.Endpoint = f.endpoint()
	}
	if configure != nil {
		configure(&opts)
	}
	g, err := apigw.NewGateway(context.Background(), opts)
	if err != nil {
		t.Fatalf("NewGateway: %v", err)
	}
	return g
}

// addConns adds connections named ids (made unique to the test) in
// namespace, subscribed to topics, and returns their ids. They connected an
// hour ago, so that a 410 for them removes them (see Gateway), and are
// removed when the test ends.
func addConns(t testing.TB, reg edge.Registry, namespace string, topics []string, names ...string) []string {
	t.Helper()
	ctx := testCtx(t)
	ids := make([]string, len(names))
	for i, name := range names {
		id := name
		ids[i] = id
		if err := reg.Add(ctx, edge.Conn{ID: id, Namespace: namespace, ConnectedAt: time.Now().Add(-time.Hour)}); err != nil {
			t.Fatalf("Add(%q): %v", id, err)
		}
		t.Cleanup(func() { reg.Remove(context.Background(), id) })
		for _, topic := range topics {
			if err := reg.Subscribe(ctx, id, topic); err != nil {
				t.Fatalf("Subscribe(%q, %q): %v", id, topic, err)
			}
		}
	}
	return ids
}

// expectForgotten checks that the Registry has forgotten the gone
// connection id: it has no subscriptions left, and its record, kept for the
// $disconnect that follows, expires within a minute.
func expectForgotten(t *testing.T, reg edge.Registry, id string) {
	t.Helper()
	ctx := testCtx(t)
	c, err := reg.Get(ctx, id)
	if errors.Is(err, edge.ErrNotFound) {
		return
	}
	if err != nil {
		t.Fatalf("Get(gone %s): %v", id, err)
	}
	if left := time.Until(c.ExpiresAt); left > time.Minute {
		t.Errorf("the gone %s expires in %v, want within a minute", id, left)
	}
	if topics, err := reg.Topics(ctx, id); err != nil || len(topics) != 0 {
		t.Errorf("the gone %s still has topics %v (%v)", id, topics, err)
	}
}

// connNames returns n connection ids unique to the test, shaped as API
// Gateway's (base64 with padding, which the SDK escapes in the path).
func connNames(prefix string, n int) []string {
	tag := strings.ReplaceAll(edge.NewID(), "-", "")[:8]
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%s%04d=", prefix, tag, i)
	}
	return ids
}

func subscribers(t testing.TB, reg edge.Registry, namespace, topic string) []string {
	t.Helper()
	var ids []string
	if err := reg.Subscribers(testCtx(t), namespace, topic, func(id string) bool {
		ids = append(ids, id)
		return true
	}); err != nil {
		t.Fatalf("Subscribers(%q, %q): %v", namespace, topic, err)
	}
	slices.Sort(ids)
	return ids
}

type registryCase struct {
	name string
	open func(t *testing.T) edge.Registry
}

// registries are the Registries Deliver is tested on.
var registries = []registryCase{
	{"memsync", func(t *testing.T) edge.Registry {
		return memsync.NewRegistry(memsync.RegistryOptions{})
	}},
	{"redissync", func(t *testing.T) edge.Registry {
		opt, err := redis.ParseURL(testenv.RedisURL(t))
		if err != nil {
			t.Fatalf("redis.ParseURL: %v", err)
		}
		client := redis.NewClient(opt)
		t.Cleanup(func() { client.Close() })
		reg, err := redissync.NewRegistry(redissync.RegistryOptions{Client: client, Channel: testenv.Channel(t)})
		if err != nil {
			t.Fatalf("redissync.NewRegistry: %v", err)
		}
		return reg
	}},
	{"pgsync", func(t *testing.T) edge.Registry {
		pool, err := pgxpool.New(context.Background(), testenv.PostgresURL(t))
		if err != nil {
			t.Fatalf("pgxpool.New: %v", err)
		}
		t.Cleanup(pool.Close)
		reg, err := pgsync.NewRegistry(pgsync.RegistryOptions{Pool: pool, Channel: testenv.Channel(t)})
		if err != nil {
			t.Fatalf("pgsync.NewRegistry: %v", err)
		}
		if err := reg.Migrate(testCtx(t)); err != nil {
			t.Fatalf("Migrate: %v", err)
		}
		return reg
	}},
}

func TestDeliver(t *testing.T) {
	for _, rc := range registries {
		t.Run(rc.name, func(t *testing.T) {
			t.Parallel()
			reg := rc.open(t)
			f := newFakeAPI(t, "test")
			var goneMu sync.Mutex
			var goneIDs []string
			g := newGateway(t, reg, f, func(o *apigw.GatewayOptions) {
				o.OnGone = func(id string) {
					goneMu.Lock()
					goneIDs = append(goneIDs, id)
					goneMu.Unlock()
				}
			})
			ctx := testCtx(t)

			a := addConns(t, reg, "/a", []string{"news", "sport"}, connNames("a", 5)...)
			other := addConns(t, reg, "/a", []string{"sport"}, connNames("o", 1)...)
			b := addConns(t, reg, "/b", []string{"news"}, connNames("b", 3)...)
			f.setGone(a[2], true)  // a GoneException
			f.setGone(b[1], false) // a bare 410

			msg := edge.Message{Namespace: "/a", Topic: "news", Data: edge.Text("hello /a")}
			if err := g.Deliver(ctx, msg, a[0]); err != nil {
				t.Fatalf("Deliver to /a: %v", err)
			}
			for _, id := range []string{a[1], a[3], a[4]} {
				if n, body := f.postsTo(id); n != 1 || body != "hello /a" {
					t.Errorf("%s got %d posts, last %q; want 1 of %q", id, n, body, "hello /a")
				}
			}
			for _, id := range append([]string{a[0], other[0]}, b...) {
				if n, _ := f.postsTo(id); n != 0 {
					t.Errorf("%s got %d posts, want none", id, n)
				}
			}

			// The gone connection is forgotten with its subscriptions.
			expectForgotten(t, reg, a[2])
			for _, topic := range []string{"news", "sport"} {
				if ids := subscribers(t, reg, "/a", topic); slices.Contains(ids, a[2]) {
					t.Errorf("the gone %s is still a subscriber of %q: %v", a[2], topic, ids)
				}
			}

			// Namespace "" reaches every namespace.
			msg = edge.Message{Topic: "news", Data: edge.Text("hello all")}
			if err := g.Deliver(ctx, msg, ""); err != nil {
				t.Fatalf("Deliver to every namespace: %v", err)
			}
			want := map[string]int{a[0]: 1, a[1]: 2, a[3]: 2, a[4]: 2, b[0]: 1, b[2]: 1, b[1]: 0, a[2]: 0, other[0]: 0}
			for id, n := range want {
				got, body := f.postsTo(id)
				if got != n || (n > 0 && body != "hello all") {
					t.Errorf("%s got %d posts, last %q; want %d, last %q", id, got, body, n, "hello all")
				}
			}
			expectForgotten(t, reg, b[1])
			wantNews := []string{a[0], a[1], a[3], a[4], b[0], b[2]}
			slices.Sort(wantNews)
			if ids := subscribers(t, reg, "", "news"); !slices.Equal(ids, wantNews) {
				t.Errorf("subscribers of news = %v, want %v", ids, wantNews)
			}
			goneMu.Lock()
			slices.Sort(goneIDs)
			wantGone := []string{a[2], b[1]}
			slices.Sort(wantGone)
			if !slices.Equal(goneIDs, wantGone) {
				t.Errorf("OnGone got %v, want %v", goneIDs, wantGone)
			}
			goneMu.Unlock()
		})
	}
}

func TestPostGone(t *testing.T) {
	for _, typed := range []bool{true, false} {
		t.Run(fmt.Sprintf("typed=%v", typed), func(t *testing.T) {
			reg := memsync.NewRegistry(memsync.RegistryOptions{})
			f := newFakeAPI(t, "test")
			var gone atomic.Pointer[string]
			g := newGateway(t, reg, f, func(o *apigw.GatewayOptions) {
				o.OnGone = func(id string) { gone.Store(&id) }
			})
			ctx := testCtx(t)
			id := addConns(t, reg, "/", []string{"t1", "t2"}, connNames("c", 1)...)[0]
			f.setGone(id, typed)

			err := g.Post(ctx, id, edge.Text("x"))
			if !errors.Is(err, apigw.ErrGone) {
				t.Fatalf("Post to a gone connection = %v, want ErrGone", err)
			}
			expectForgotten(t, reg, id)
			if ids := subscribers(t, reg, "/", "t1"); len(ids) != 0 {
				t.Errorf("subscribers of t1 after 410 = %v, want none", ids)
			}
			if p := gone.Load(); p == nil || *p != id {
				t.Errorf("OnGone got %v, want %q", p, id)
			}
		})
	}
}

func TestThrottled(t *testing.T) {
	for _, bare := range []bool{false, true} {
		t.Run(fmt.Sprintf("bare=%v", bare), func(t *testing.T) {
			reg := memsync.NewRegistry(memsync.RegistryOptions{})
			f := newFakeAPI(t, "test")
			g := newGateway(t, reg, f, func(o *apigw.GatewayOptions) { o.MaxRetries = 3 })
			ctx := testCtx(t)
			ids := addConns(t, reg, "/", []string{"t"}, connNames("c", 2)...)

			// Throttled three times, then posted: the third retry succeeds.
			f.throttle(ids[0], 3, bare)
			if err := g.Post(ctx, ids[0], edge.Text("retried")); err != nil {
				t.Fatalf("Post throttled 3 times with MaxRetries 3: %v", err)
			}
			if n, body := f.postsTo(ids[0]); n != 1 || body != "retried" {
				t.Errorf("got %d posts, last %q; want 1 of %q", n, body, "retried")
			}
			if got := f.requests.Load(); got != 4 {
				t.Errorf("%d requests, want 4 (1 + 3 retries)", got)
			}

			// Throttled for good: Deliver gives up after 3 retries.
			f.requests.Store(0)
			f.throttle(ids[1], 1000, bare)
			err := g.Deliver(ctx, edge.Message{Namespace: "/", Topic: "t", Data: edge.Text("given up")}, ids[0])
			if err == nil {
				t.Fatal("Deliver throttled for good returned no error")
			}
			if !strings.Contains(err.Error(), "1 of 1 posts") {
				t.Errorf("Deliver error %q does not count the failures", err)
			}
			var limit *types.LimitExceededException
			if !bare && !errors.As(err, &limit) {
				t.Errorf("Deliver error %v does not wrap a LimitExceededException", err)
			}
			if got := f.requests.Load(); got != 4 {
				t.Errorf("%d requests, want 4 (1 + 3 retries)", got)
			}
			if _, err := reg.Get(ctx, ids[1]); err != nil {
				t.Errorf("a throttled connection was removed: %v", err)
			}
		})
	}
}

func TestThrottledNoRetry(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	g := newGateway(t, reg, f, func(o *apigw.GatewayOptions) { o.MaxRetries = -1 })
	id := addConns(t, reg, "/", []string{"t"}, connNames("c", 1)...)[0]
	f.throttle(id, 1, false)
	if err := g.Post(testCtx(t), id, edge.Text("x")); err == nil {
		t.Fatal("Post throttled once with MaxRetries -1 returned no error")
	}
	if got := f.requests.Load(); got != 1 {
		t.Errorf("%d requests, want 1", got)
	}
}

func TestThrottledBackoffBoundedByContext(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	g := newGateway(t, reg, f, func(o *apigw.GatewayOptions) { o.MaxRetries = 1000 })
	id := addConns(t, reg, "/", []string{"t"}, connNames("c", 1)...)[0]
	f.throttle(id, 1_000_000, false)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := g.Post(ctx, id, edge.Text("x"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Post throttled past its context = %v, want DeadlineExceeded", err)
	}
}

func TestPostTimeout(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	f.setHook(func(w http.ResponseWriter, r *http.Request, id string) bool {
		select { // hangs until the client gives up
		case <-r.Context().Done():
		case <-f.closing:
		}
		return true
	})
	const timeout = 200 * time.Millisecond
	g := newGateway(t, reg, f, func(o *apigw.GatewayOptions) { o.PostTimeout = timeout })
	ids := addConns(t, reg, "/", []string{"t"}, connNames("c", 3)...)

	start := time.Now()
	err := g.Post(testCtx(t), ids[0], edge.Text("x"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Post to a hung server = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d < timeout || d > 10*timeout {
		t.Errorf("Post to a hung server took %v, want about %v", d, timeout)
	}

	start = time.Now()
	err = g.Deliver(testCtx(t), edge.Message{Namespace: "/", Topic: "t", Data: edge.Text("x")}, "")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "3 of 3 posts") {
		t.Fatalf("Deliver to a hung server = %v, want 3 of 3 failed with DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*timeout {
		t.Errorf("Deliver to a hung server took %v, want about %v", d, timeout)
	}
}

func TestPayloadTooLarge(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	g := newGateway(t, reg, f, nil)
	ctx := testCtx(t)
	id := addConns(t, reg, "/", []string{"t"}, connNames("c", 1)...)[0]

	tooLarge := []edge.Data{
		edge.Text(strings.Repeat("x", apigw.MaxPayload+1)),
		edge.Binary(make([]byte, apigw.MaxPayload*3/4+1)), // over the limit in base64
	}
	for _, d := range tooLarge {
		err := g.Post(ctx, id, d)
		if !errors.Is(err, apigw.ErrPayloadTooLarge) {
			t.Errorf("Post of %d bytes (binary %v) = %v, want ErrPayloadTooLarge", len(d.Bytes), d.Binary, err)
		} else if !strings.Contains(err.Error(), fmt.Sprint(len(d.Bytes))) {
			t.Errorf("error %q does not say the size %d", err, len(d.Bytes))
		}
		err = g.Deliver(ctx, edge.Message{Namespace: "/", Topic: "t", Data: d}, "")
		if !errors.Is(err, apigw.ErrPayloadTooLarge) {
			t.Errorf("Deliver of %d bytes (binary %v) = %v, want ErrPayloadTooLarge", len(d.Bytes), d.Binary, err)
		}
	}
	if n := f.requests.Load(); n != 0 {
		t.Fatalf("%d requests for payloads over the limit, want none", n)
	}

	// The limit itself is allowed, in text and in base64.
	for _, d := range []edge.Data{
		edge.Text(strings.Repeat("x", apigw.MaxPayload)),
		edge.Binary(make([]byte, apigw.MaxPayload*3/4)),
	} {
		if err := g.Post(ctx, id, d); err != nil {
			t.Errorf("Post of %d bytes (binary %v): %v", len(d.Bytes), d.Binary, err)
		}
	}
	if n, body := f.postsTo(id); n != 2 || len(body) != apigw.MaxPayload {
		t.Errorf("got %d posts, the last of %d bytes; want 2, of %d", n, len(body), apigw.MaxPayload)
	}
}

func TestPayloadTooLargeAnswer(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	f.setHook(func(w http.ResponseWriter, r *http.Request, id string) bool {
		awsError(w, http.StatusRequestEntityTooLarge, "PayloadTooLargeException", "Message too long")
		return true
	})
	g := newGateway(t, reg, f, nil)
	id := addConns(t, reg, "/", []string{"t"}, connNames("c", 1)...)[0]
	err := g.Post(testCtx(t), id, edge.Text("x"))
	var large *types.PayloadTooLargeException
	if !errors.Is(err, apigw.ErrPayloadTooLarge) || !errors.As(err, &large) {
		t.Errorf("Post answered 413 = %v, want ErrPayloadTooLarge and a PayloadTooLargeException", err)
	}
}

// failingRegistry fails Subscribers after it has listed after ids.
type failingRegistry struct {
	edge.Registry
	after int
}

var errListing = errors.New("listing failed")

func (r failingRegistry) Subscribers(ctx context.Context, namespace, topic string, each func(id string) bool) error {
	n := 0
	stopped := false
	err := r.Registry.Subscribers(ctx, namespace, topic, func(id string) bool {
		if n == r.after {
			stopped = true
			return false
		}
		n++
		return each(id)
	})
	if err != nil || !stopped {
		return err
	}
	return errListing
}

func TestSubscribersFail(t *testing.T) {
	mem := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	g := newGateway(t, failingRegistry{mem, 2}, f, nil)
	addConns(t, mem, "/", []string{"t"}, connNames("c", 5)...)
	err := g.Deliver(testCtx(t), edge.Message{Namespace: "/", Topic: "t", Data: edge.Text("x")}, "")
	if !errors.Is(err, errListing) {
		t.Errorf("Deliver = %v, want the Registry's error", err)
	}
	if n := f.requests.Load(); n != 2 {
		t.Errorf("%d posts, want the 2 listed before the failure", n)
	}
}

func TestInvalidText(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	g := newGateway(t, reg, f, nil)
	id := addConns(t, reg, "/", []string{"t"}, connNames("c", 1)...)[0]
	bad := edge.Data{Bytes: []byte{0xff, 0xfe}}
	if err := g.Post(testCtx(t), id, bad); !errors.Is(err, edge.ErrInvalidText) {
		t.Errorf("Post of invalid text = %v, want edge.ErrInvalidText", err)
	}
	if n := f.requests.Load(); n != 0 {
		t.Errorf("%d requests for invalid text, want none", n)
	}
}

func TestBinaryAsBase64(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	g := newGateway(t, reg, f, nil)
	ctx := testCtx(t)
	ids := addConns(t, reg, "/", []string{"bin"}, connNames("c", 2)...)

	bin := edge.Binary([]byte{0x00, 0x01, 0x02, 0xff, 0xfe})
	const want = "AAEC//4="
	if got := string(apigw.Payload(bin)); got != want {
		t.Errorf("Payload(binary) = %q, want %q", got, want)
	}
	if got := string(apigw.Payload(edge.Text("héllo"))); got != "héllo" {
		t.Errorf("Payload(text) = %q, want it unchanged", got)
	}
	if err := g.Deliver(ctx, edge.Message{Namespace: "/", Topic: "bin", Data: bin}, ids[1]); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if n, body := f.postsTo(ids[0]); n != 1 || body != want {
		t.Errorf("got %d posts, last %q; want 1 of %q", n, body, want)
	}
	if err := g.Post(ctx, ids[1], edge.Text("héllo")); err != nil {
		t.Fatalf("Post: %v", err)
	}
	if _, body := f.postsTo(ids[1]); body != "héllo" {
		t.Errorf("text posted as %q, want it unchanged", body)
	}
}

func TestConcurrencyBounded(t *testing.T) {
	const conc, subs = 4, 40
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	full := make(chan struct{}) // closed when conc posts are in flight
	over := make(chan struct{}) // closed when more are
	var fullOnce, overOnce sync.Once
	release := make(chan struct{})
	f.setHook(func(w http.ResponseWriter, r *http.Request, id string) bool {
		// The first requests wait, in flight, until the test releases them.
		switch n := f.inflight.Load(); {
		case n > conc:
			overOnce.Do(func() { close(over) })
		case n == conc:
			fullOnce.Do(func() { close(full) })
		}
		select {
		case <-release:
		case <-f.closing:
		}
		return false
	})
	g := newGateway(t, reg, f, func(o *apigw.GatewayOptions) { o.Concurrency = conc })
	addConns(t, reg, "/", []string{"t"}, connNames("c", subs)...)

	done := make(chan error, 1)
	go func() {
		done <- g.Deliver(testCtx(t), edge.Message{Namespace: "/", Topic: "t", Data: edge.Text("x")}, "")
	}()
	testenv.Recv(t, full, testTimeout, fmt.Sprintf("%d posts in flight at once", conc))
	// A Deliver that did not bound its posts would send more while these
	// wait; give it the time to show.
	select {
	case <-over:
		t.Errorf("more than %d posts in flight", conc)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := testenv.Recv(t, done, testTimeout, "Deliver"); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if got := f.maxIn.Load(); got != conc {
		t.Errorf("at most %d posts in flight, want %d", got, conc)
	}
	if got := f.requests.Load(); got != subs {
		t.Errorf("%d posts, want %d", got, subs)
	}
}

func TestConnectionsReused(t *testing.T) {
	const conc, subs = 8, 400
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	g := newGateway(t, reg, f, func(o *apigw.GatewayOptions) { o.Concurrency = conc })
	addConns(t, reg, "/", []string{"t"}, connNames("c", subs)...)
	ctx := testCtx(t)
	for range 3 {
		if err := g.Deliver(ctx, edge.Message{Namespace: "/", Topic: "t", Data: edge.Text("x")}, ""); err != nil {
			t.Fatalf("Deliver: %v", err)
		}
	}
	if got := f.requests.Load(); got != 3*subs {
		t.Fatalf("%d posts, want %d", got, 3*subs)
	}
	if n := f.newConns.Load(); n > 2*conc {
		t.Errorf("%d TCP connections for %d posts, want at most %d", n, 3*subs, 2*conc)
	}
}

func TestNoEndpoint(t *testing.T) {
	t.Setenv(apigw.EndpointEnv, "")
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "prod")
	g := newGateway(t, reg, nil, nil)
	ctx := testCtx(t)
	id := addConns(t, reg, "/", []string{"t"}, connNames("c", 1)...)[0]
	msg := edge.Message{Namespace: "/", Topic: "t", Data: edge.Text("x")}

	check := func(when string) {
		t.Helper()
		if got := g.Endpoint(); got != "" {
			t.Errorf("%s: Endpoint() = %q, want none", when, got)
		}
		if err := g.Deliver(ctx, msg, ""); !errors.Is(err, apigw.ErrNoEndpoint) {
			t.Errorf("%s: Deliver = %v, want ErrNoEndpoint", when, err)
		}
		if err := g.Post(ctx, id, msg.Data); !errors.Is(err, apigw.ErrNoEndpoint) {
			t.Errorf("%s: Post = %v, want ErrNoEndpoint", when, err)
		}
		if err := g.Delete(ctx, id); !errors.Is(err, apigw.ErrNoEndpoint) {
			t.Errorf("%s: Delete = %v, want ErrNoEndpoint", when, err)
		}
		if _, err := g.Connection(ctx, id); !errors.Is(err, apigw.ErrNoEndpoint) {
			t.Errorf("%s: Connection = %v, want ErrNoEndpoint", when, err)
		}
	}
	check("before SetEndpoint")
	g.SetEndpoint("ftp://nowhere")
	check("after an invalid SetEndpoint")
	if err := g.Post(ctx, id, msg.Data); err == nil || !strings.Contains(err.Error(), "ftp://nowhere") {
		t.Errorf("Post after an invalid SetEndpoint = %v, want it to name the endpoint", err)
	}

	// The first valid SetEndpoint wins, whoever calls at once; the
	// trailing slash of a base path is dropped.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			g.SetEndpoint(f.endpoint() + "/")
			g.Endpoint()
		})
	}
	wg.Wait()
	g.SetEndpoint("https://elsewhere.example/prod")
	if got := g.Endpoint(); got != f.endpoint() {
		t.Errorf("Endpoint() = %q, want %q", got, f.endpoint())
	}
	if err := g.Deliver(ctx, msg, ""); err != nil {
		t.Fatalf("Deliver after SetEndpoint: %v", err)
	}
	if n, _ := f.postsTo(id); n != 1 {
		t.Errorf("got %d posts, want 1", n)
	}
}

func TestDeleteAndConnection(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	var gone atomic.Int64
	g := newGateway(t, reg, f, func(o *apigw.GatewayOptions) { o.OnGone = func(string) { gone.Add(1) } })
	ctx := testCtx(t)
	id := addConns(t, reg, "/", []string{"t"}, connNames("c", 1)...)[0]

	info, err := g.Connection(ctx, id)
	if err != nil {
		t.Fatalf("Connection: %v", err)
	}
	want := apigw.ConnInfo{ConnectedAt: testConnectedAt, LastActiveAt: testLastActiveAt, SourceIP: "192.0.2.7", UserAgent: "test-agent/1.0"}
	if !info.ConnectedAt.Equal(want.ConnectedAt) || !info.LastActiveAt.Equal(want.LastActiveAt) ||
		info.SourceIP != want.SourceIP || info.UserAgent != want.UserAgent {
		t.Errorf("Connection = %+v, want %+v", info, want)
	}

	if err := g.Delete(ctx, id); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	// The $disconnect event removes a closed connection, not Delete.
	if _, err := reg.Get(ctx, id); err != nil {
		t.Errorf("Get after Delete: %v", err)
	}
	if _, err := g.Connection(ctx, id); !errors.Is(err, apigw.ErrGone) {
		t.Errorf("Connection after Delete = %v, want ErrGone", err)
	}
	expectForgotten(t, reg, id)
	if err := g.Delete(ctx, id); !errors.Is(err, apigw.ErrGone) {
		t.Errorf("Delete of a gone connection = %v, want ErrGone", err)
	}
	if n := gone.Load(); n != 2 {
		t.Errorf("OnGone called %d times, want 2", n)
	}
}

func TestServerError(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	f.setHook(func(w http.ResponseWriter, r *http.Request, id string) bool {
		if strings.HasPrefix(id, "bad") {
			awsError(w, http.StatusForbidden, "ForbiddenException", "Forbidden")
			return true
		}
		return false
	})
	g := newGateway(t, reg, f, nil)
	ctx := testCtx(t)
	good := addConns(t, reg, "/", []string{"t"}, connNames("good", 3)...)
	bad := addConns(t, reg, "/", []string{"t"}, connNames("bad", 2)...)
	err := g.Deliver(ctx, edge.Message{Namespace: "/", Topic: "t", Data: edge.Text("x")}, "")
	var forbidden *types.ForbiddenException
	if !errors.As(err, &forbidden) || !strings.Contains(err.Error(), "2 of 5 posts") {
		t.Fatalf("Deliver = %v, want 2 of 5 posts failed with a ForbiddenException", err)
	}
	for _, id := range good {
		if n, _ := f.postsTo(id); n != 1 {
			t.Errorf("%s got %d posts, want 1", id, n)
		}
	}
	for _, id := range bad {
		if _, err := reg.Get(ctx, id); err != nil {
			t.Errorf("a connection that failed with 403 was removed: %v", err)
		}
	}
}

func TestDeliverCanceled(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	g := newGateway(t, reg, f, nil)
	addConns(t, reg, "/", []string{"t"}, connNames("c", 3)...)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := g.Deliver(ctx, edge.Message{Namespace: "/", Topic: "t", Data: edge.Text("x")}, "")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Deliver with a canceled context = %v, want context.Canceled", err)
	}
}

func TestNewGatewayErrors(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	for _, tc := range []struct {
		name string
		opts apigw.GatewayOptions
	}{
		{"no registry", apigw.GatewayOptions{Config: testConfig()}},
		{"bad endpoint", apigw.GatewayOptions{Registry: reg, Config: testConfig(), Endpoint: "execute-api/prod"}},
		{"no region", apigw.GatewayOptions{Registry: reg, Config: &aws.Config{}}},
		{"negative concurrency", apigw.GatewayOptions{Registry: reg, Config: testConfig(), Concurrency: -1}},
		{"negative timeout", apigw.GatewayOptions{Registry: reg, Config: testConfig(), PostTimeout: -time.Second}},
	} {
		if _, err := apigw.NewGateway(context.Background(), tc.opts); err == nil {
			t.Errorf("%s: NewGateway returned no error", tc.name)
		}
	}
}

func TestCustomHTTPClient(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(t, "test")
	var seen atomic.Int64
	client := &http.Client{Transport: roundTripper(func(r *http.Request) (*http.Response, error) {
		seen.Add(1)
		return http.DefaultTransport.RoundTrip(r)
	})}
	t.Cleanup(client.CloseIdleConnections)
	g := newGateway(t, reg, f, func(o *apigw.GatewayOptions) { o.HTTPClient = client })
	id := addConns(t, reg, "/", []string{"t"}, connNames("c", 1)...)[0]
	if err := g.Post(testCtx(t), id, edge.Text("x")); err != nil {
		t.Fatalf("Post: %v", err)
	}
	if seen.Load() != 1 {
		t.Errorf("the HTTPClient made %d requests, want 1", seen.Load())
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func BenchmarkDeliver1000(b *testing.B) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	f := newFakeAPI(b, "test")
	g := newGateway(b, reg, f, nil)
	addConns(b, reg, "/", []string{"t"}, connNames("c", 1000)...)
	msg := edge.Message{Namespace: "/", Topic: "t", Data: edge.Text(string(bytes.Repeat([]byte("x"), 256)))}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := g.Deliver(ctx, msg, ""); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1000), "ns/post")
}

func TestEndpointFromTheEnvironment(t *testing.T) {
	f := newFakeAPI(t, "env")
	t.Setenv(apigw.EndpointEnv, f.endpoint())
	g := newGateway(t, memsync.NewRegistry(memsync.RegistryOptions{}), nil, nil)
	if g.Endpoint() != f.endpoint() {
		t.Fatalf("endpoint %q, want %q from %s", g.Endpoint(), f.endpoint(), apigw.EndpointEnv)
	}
}
