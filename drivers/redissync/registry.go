package redissync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/edge"
)

// DefaultTTL is how long a Registry keeps a connection added with a zero
// ExpiresAt: the longest an API Gateway WebSocket connection lives.
const DefaultTTL = edge.DefaultConnTTL

// scanCount is the COUNT hint of SSCAN: about how many members Subscribers
// reads, and checks, per round trip.
const scanCount = 500

// RegistryOptions configure a Registry.
type RegistryOptions struct {
	// Client is the user's Redis client: a *redis.Client, a
	// *redis.ClusterClient or a failover client. It is never closed by
	// the Registry. Required.
	Client redis.UniversalClient
	// Channel scopes the keys: registries with different channels never
	// see each other's connections. Required.
	Channel string
	// TTL is the lifetime of a connection added with a zero ExpiresAt.
	// 0 means DefaultTTL.
	TTL time.Duration
}

// Registry is an edge.Registry kept in Redis, so that every instance of a
// cluster, on a VM or in a Lambda function, sees the same gateway-held
// connections. It is safe for concurrent use.
//
// # Keys
//
// Every key begins with "edgesync:{<channel>}:", where the channel is escaped
// as below; the braces make it a hash tag, so all the keys of one channel live
// in one Redis Cluster slot and are updated together by Lua scripts, which
// keeps every multi-key change atomic. (The scripts derive the names of
// subscriber sets from the stored namespace and topics: they share the hash
// tag, and so the slot, of the keys the scripts declare.) For each
// connection:
//
//	edgesync:{<channel>}:conn:<id>       hash: namespace, attrs (JSON), connected_at, expires_at (RFC 3339)
//	edgesync:{<channel>}:topics:<id>     set of the connection's topics
//
// both expiring when the connection does (PEXPIREAT), and for each topic:
//
//	edgesync:{<channel>}:subs:<namespace>:<topic>   set of the ids subscribed in namespace
//	edgesync:{<channel>}:nss:<topic>                set of the namespaces with subscribers
//
// which expire when the last connection that joined them does. Channel,
// namespace, topic and id are escaped in key names: '%', ':', '{' and '}' are
// written as "%25", "%3A", "%7B" and "%7D". An escaped part therefore never
// holds ':', so two different namespace and topic pairs never share a key,
// and never holds a brace, so the hash tag is exactly the escaped channel.
//
// A connection that expires leaves its id in the subscriber sets until
// Subscribers meets it: Subscribers checks every id it reads, skips the
// expired ones and removes them.
type Registry struct {
	client redis.UniversalClient
	prefix string
	ttl    time.Duration
}

var _ edge.Registry = (*Registry)(nil)

// NewRegistry returns a Registry that keeps its state in Redis through
// opts.Client. It returns an error when opts.Client or opts.Channel is
// missing.
func NewRegistry(opts RegistryOptions) (*Registry, error) {
	if opts.Client == nil {
		return nil, errors.New("redissync: RegistryOptions.Client is nil")
	}
	if opts.Channel == "" {
		return nil, errors.New("redissync: RegistryOptions.Channel is empty")
	}
	r := &Registry{
		client: opts.Client,
		prefix: "edgesync:{" + escapeKey(opts.Channel) + "}:",
		ttl:    opts.TTL,
	}
	if r.ttl <= 0 {
		r.ttl = DefaultTTL
	}
	return r, nil
}

// keyEscaper escapes one part of a key name; luaCommon's esc does the same.
var keyEscaper = strings.NewReplacer("%", "%25", ":", "%3A", "{", "%7B", "}", "%7D")

func escapeKey(s string) string { return keyEscaper.Replace(s) }

func (r *Registry) connKey(id string) string   { return r.prefix + "conn:" + escapeKey(id) }
func (r *Registry) topicsKey(id string) string { return r.prefix + "topics:" + escapeKey(id) }
func (r *Registry) nssKey(topic string) string { return r.prefix + "nss:" + escapeKey(topic) }
func (r *Registry) subsKey(namespace, topic string) string {
	return r.prefix + "subs:" + escapeKey(namespace) + ":" + escapeKey(topic)
}

// luaCommon opens every script that takes the connection's keys as KEYS[1]
// (conn) and KEYS[2] (topics), the key prefix as ARGV[1] and the id as
// ARGV[2]. The keys of subscriber sets depend on the stored namespace and
// topics, so scripts build them: they share the hash tag of the declared
// keys, and so their slot.
const luaCommon = `
local P = ARGV[1]
local function esc(s)
	return (string.gsub(s, '[%%:{}]', function(c) return string.format('%%%02X', string.byte(c)) end))
end
local function subsKey(ns, topic) return P .. 'subs:' .. esc(ns) .. ':' .. esc(topic) end
local function nssKey(topic) return P .. 'nss:' .. esc(topic) end
-- extend makes key live at least pttl more milliseconds.
local function extend(key, pttl)
	if pttl < 0 then return end
	local cur = redis.call('PTTL', key)
	if cur < 0 or cur < pttl then redis.call('PEXPIRE', key, pttl) end
end
-- unlink deletes the connection and takes its id out of its subscriber sets.
local function unlink()
	local ns = redis.call('HGET', KEYS[1], 'namespace')
	if ns then
		for _, topic in ipairs(redis.call('SMEMBERS', KEYS[2])) do
			redis.call('SREM', subsKey(ns, topic), ARGV[2])
		end
	end
	redis.call('DEL', KEYS[1], KEYS[2])
end
`

// addScript: ARGV[3..7] = namespace, attrs, connected_at, expires_at, expiry
// in Unix milliseconds.
var addScript = redis.NewScript(luaCommon + `
unlink()
redis.call('HSET', KEYS[1], 'namespace', ARGV[3], 'attrs', ARGV[4], 'connected_at', ARGV[5], 'expires_at', ARGV[6])
redis.call('PEXPIREAT', KEYS[1], ARGV[7])
return 1
`)

var removeScript = redis.NewScript(luaCommon + `
unlink()
return 1
`)

// subscribeScript: ARGV[3] = topic. It returns 0 for an unknown connection.
var subscribeScript = redis.NewScript(luaCommon + `
local ns = redis.call('HGET', KEYS[1], 'namespace')
if not ns then return 0 end
local pttl = redis.call('PTTL', KEYS[1])
local topic = ARGV[3]
redis.call('SADD', KEYS[2], topic)
extend(KEYS[2], pttl)
local subs = subsKey(ns, topic)
redis.call('SADD', subs, ARGV[2])
extend(subs, pttl)
local nss = nssKey(topic)
redis.call('SADD', nss, ns)
extend(nss, pttl)
return 1
`)

// unsubscribeScript: ARGV[3] = topic.
var unsubscribeScript = redis.NewScript(luaCommon + `
local ns = redis.call('HGET', KEYS[1], 'namespace')
if not ns then return 0 end
redis.call('SREM', KEYS[2], ARGV[3])
redis.call('SREM', subsKey(ns, ARGV[3]), ARGV[2])
return 1
`)

// reapScript removes member ARGV[i] from the set KEYS[1] when KEYS[i+1], the
// key that keeps it alive, no longer exists.
var reapScript = redis.NewScript(`
for i = 2, #KEYS do
	if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('SREM', KEYS[1], ARGV[i - 1]) end
end
return 1
`)

func notFound(id string) error {
	return fmt.Errorf("redissync: connection %q: %w", id, edge.ErrNotFound)
}

// Hash fields of a connection.
const (
	fieldNamespace   = "namespace"
	fieldAttrs       = "attrs"
	fieldConnectedAt = "connected_at"
	fieldExpiresAt   = "expires_at"
)

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

// Add stores c, replacing any connection with the same ID together with its
// subscriptions. A zero c.ExpiresAt means now plus the Registry's TTL; the
// connection's keys expire then.
func (r *Registry) Add(ctx context.Context, c edge.Conn) error {
	if c.ID == "" {
		return errors.New("redissync: add: connection has no ID")
	}
	if c.ExpiresAt.IsZero() {
		c.ExpiresAt = time.Now().Add(r.ttl)
	}
	var attrs []byte
	if len(c.Attrs) > 0 {
		var err error
		if attrs, err = json.Marshal(c.Attrs); err != nil {
			return fmt.Errorf("redissync: add %q: attributes: %w", c.ID, err)
		}
	}
	err := addScript.Run(ctx, r.client, []string{r.connKey(c.ID), r.topicsKey(c.ID)},
		r.prefix, c.ID, c.Namespace, string(attrs), formatTime(c.ConnectedAt), formatTime(c.ExpiresAt), c.ExpiresAt.UnixMilli()).Err()
	if err != nil {
		return fmt.Errorf("redissync: add %q: %w", c.ID, err)
	}
	return nil
}

// Remove forgets the connection, its topics and its place in every
// subscriber set. Removing an unknown connection is not an error.
func (r *Registry) Remove(ctx context.Context, id string) error {
	err := removeScript.Run(ctx, r.client, []string{r.connKey(id), r.topicsKey(id)}, r.prefix, id).Err()
	if err != nil {
		return fmt.Errorf("redissync: remove %q: %w", id, err)
	}
	return nil
}

// Get returns the connection, or an error wrapping edge.ErrNotFound when it
// is unknown or has expired.
func (r *Registry) Get(ctx context.Context, id string) (edge.Conn, error) {
	fields, err := r.client.HGetAll(ctx, r.connKey(id)).Result()
	if err != nil {
		return edge.Conn{}, fmt.Errorf("redissync: get %q: %w", id, err)
	}
	if len(fields) == 0 {
		return edge.Conn{}, notFound(id)
	}
	c := edge.Conn{ID: id, Namespace: fields[fieldNamespace]}
	if c.ConnectedAt, err = parseTime(fields[fieldConnectedAt]); err == nil {
		c.ExpiresAt, err = parseTime(fields[fieldExpiresAt])
	}
	if err == nil && fields[fieldAttrs] != "" {
		err = json.Unmarshal([]byte(fields[fieldAttrs]), &c.Attrs)
	}
	if err != nil {
		return edge.Conn{}, fmt.Errorf("redissync: get %q: corrupt record: %w", id, err)
	}
	if !c.ExpiresAt.IsZero() && !time.Now().Before(c.ExpiresAt) {
		return edge.Conn{}, notFound(id)
	}
	return c, nil
}

// Subscribe adds topic to the connection's subscriptions. It returns an error
// wrapping edge.ErrNotFound for an unknown or expired connection, and
// edge.ErrInvalidTopic for an empty topic.
func (r *Registry) Subscribe(ctx context.Context, id, topic string) error {
	if topic == "" {
		return edge.ErrInvalidTopic
	}
	ok, err := subscribeScript.Run(ctx, r.client, []string{r.connKey(id), r.topicsKey(id)}, r.prefix, id, topic).Int()
	if err != nil {
		return fmt.Errorf("redissync: subscribe %q to %q: %w", id, topic, err)
	}
	if ok == 0 {
		return notFound(id)
	}
	return nil
}

// Unsubscribe removes topic from the connection's subscriptions. Removing a
// topic the connection does not have, or from an unknown connection, is not
// an error.
func (r *Registry) Unsubscribe(ctx context.Context, id, topic string) error {
	err := unsubscribeScript.Run(ctx, r.client, []string{r.connKey(id), r.topicsKey(id)}, r.prefix, id, topic).Err()
	if err != nil {
		return fmt.Errorf("redissync: unsubscribe %q from %q: %w", id, topic, err)
	}
	return nil
}

// Topics returns the connection's topics, sorted, or an error wrapping
// edge.ErrNotFound for an unknown or expired connection.
func (r *Registry) Topics(ctx context.Context, id string) ([]string, error) {
	var exists *redis.IntCmd
	var members *redis.StringSliceCmd
	_, err := r.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		exists = p.Exists(ctx, r.connKey(id))
		members = p.SMembers(ctx, r.topicsKey(id))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redissync: topics of %q: %w", id, err)
	}
	if exists.Val() == 0 {
		return nil, notFound(id)
	}
	topics := members.Val()
	slices.Sort(topics)
	return topics, nil
}

// Subscribers calls each with the id of every live connection subscribed to
// topic in namespace ("" means every namespace) until each returns false.
//
// It reads the subscriber set with SSCAN, about 500 ids at a time, and checks
// each page for expired connections in one pipelined round trip: it never
// holds the whole set in memory. Expired connections are skipped and taken
// out of the set. As with every SCAN, an id subscribed during the whole call
// is reported, one subscribed or removed meanwhile may or may not be, and,
// should Redis resize the set meanwhile, an id may be reported twice.
func (r *Registry) Subscribers(ctx context.Context, namespace, topic string, each func(id string) bool) error {
	if namespace != "" {
		_, _, err := r.scanSubscribers(ctx, r.subsKey(namespace, topic), each)
		if err != nil {
			return fmt.Errorf("redissync: subscribers of %q in %q: %w", topic, namespace, err)
		}
		return nil
	}
	if err := r.scanNamespaces(ctx, topic, each); err != nil {
		return fmt.Errorf("redissync: subscribers of %q: %w", topic, err)
	}
	return nil
}

// scanNamespaces calls scanSubscribers for every namespace that has
// subscribers of topic, taking out of the index the namespaces that have
// none left.
func (r *Registry) scanNamespaces(ctx context.Context, topic string, each func(id string) bool) error {
	key := r.nssKey(topic)
	var cursor uint64
	for {
		namespaces, next, err := r.client.SScan(ctx, key, cursor, "", scanCount).Result()
		if err != nil {
			return err
		}
		var empty []string
		stopped := false
		for _, ns := range namespaces {
			stop, seen, err := r.scanSubscribers(ctx, r.subsKey(ns, topic), each)
			if err != nil {
				return err
			}
			if seen == 0 {
				empty = append(empty, ns)
			}
			if stop {
				stopped = true
				break
			}
		}
		if len(empty) > 0 {
			keys := make([]string, 0, 1+len(empty))
			keys = append(keys, key)
			for _, ns := range empty {
				keys = append(keys, r.subsKey(ns, topic))
			}
			if err := r.reap(ctx, keys, empty); err != nil {
				return err
			}
		}
		if stopped || next == 0 {
			return nil
		}
		cursor = next
	}
}

// scanSubscribers calls each with the live members of the subscriber set
// key, page by page. It reports whether each asked to stop and how many
// members, live or not, it read.
func (r *Registry) scanSubscribers(ctx context.Context, key string, each func(id string) bool) (stop bool, seen int, err error) {
	var (
		cursor uint64
		exists []*redis.IntCmd
		dead   []string
		keys   []string
	)
	for {
		ids, next, err := r.client.SScan(ctx, key, cursor, "", scanCount).Result()
		if err != nil {
			return false, seen, err
		}
		seen += len(ids)
		if len(ids) > 0 {
			exists = exists[:0]
			_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, id := range ids {
					exists = append(exists, p.Exists(ctx, r.connKey(id)))
				}
				return nil
			})
			if err != nil {
				return false, seen, err
			}
			dead, keys = dead[:0], append(keys[:0], key)
			for i, id := range ids {
				switch {
				case exists[i].Val() == 0:
					dead = append(dead, id)
					keys = append(keys, r.connKey(id))
				case !stop:
					stop = !each(id)
				}
			}
			if len(dead) > 0 {
				if err := r.reap(ctx, keys, dead); err != nil {
					return stop, seen, err
				}
			}
			if stop {
				return true, seen, nil
			}
		}
		if next == 0 {
			return false, seen, nil
		}
		cursor = next
	}
}

// reap removes members[i] from the set keys[0] unless keys[i+1] exists: a
// check made again, atomically, in case the member came back meanwhile.
func (r *Registry) reap(ctx context.Context, keys []string, members []string) error {
	args := make([]any, len(members))
	for i, m := range members {
		args[i] = m
	}
	return reapScript.Run(ctx, r.client, keys, args...).Err()
}
