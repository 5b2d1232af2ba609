// Package pgsync relays edgesync messages between instances through
// Postgres LISTEN/NOTIFY, and keeps the state of gateway-held connections in
// Postgres tables (Registry). It is built on pgx v5.
//
// # Backplane
//
// New returns the edge.Sync of one instance. Every instance on the same
// Channel sees the messages the others publish; instances on other channels
// never do. The channel is a Postgres identifier: at most 63 bytes.
//
// Each instance LISTENs on a connection of its own (application_name
// "edgesync-listen"), either dialled from Options.ConnString or taken out of
// Options.Pool. When that connection dies the driver reconnects with backoff
// (at most one second between attempts), LISTENs again and reports the outage
// once at edge.StageSubscribe. Relay is best effort, as with every edgesync
// driver: what is published while an instance is not listening does not
// reach it.
//
// # Liveness
//
// A connection can die without closing (a network that drops every packet, a
// proxy that froze), and a listener can look healthy and receive nothing. So
// every second, whatever the traffic, the driver pings the server on the
// listening connection, and publishes a probe through the pool to its own
// channel. When the ping is not answered, or the probe has not come back,
// within 2 seconds, the listening connection is reported lost at
// edge.StageSubscribe and replaced: a dead listener is found out within 3
// seconds. A probe is the notification
//
//	{"edgesync":"probe","id":"<instance id>","n":<number>}
//
// which is not an envelope: other instances drop it without a report, and so
// do crossws instances. A probe that cannot be published (the publishing
// side is down too) proves nothing and is not reported; the Hub reports the
// failing relays at edge.StagePublish.
//
// On the publishing side, a publish is bounded by the Hub's PublishTimeout.
// pgx closes a connection whose query timed out, and the pool discards it.
// When the driver built the pool itself (Options.Pool is nil), it also
// discards the pool's idle connections then, which were opened before the
// same fault, so that the next publish does not stall on one of them. A
// user's pool is left alone: set its pgxpool.Config.PingTimeout so that a
// dead idle connection is found out quickly when it is acquired.
//
// Messages are published with pg_notify on the pool, a batch in one
// statement (unnest of an array of payloads), which commits without waiting
// for the WAL flush (synchronous_commit off for that transaction only): a
// notification is not durable anyway, and Postgres serialises the commits of
// notifying transactions. A notification carries the envelope of package
// envelope, so a crossws (Node) instance listening on the same channel
// interoperates:
//
//	{"id":"<instance id>","msg":{"namespace":"…","topic":"…","binary":false,"data":"…"}}
//
// Postgres merges identical notifications sent in one transaction. When one
// batch holds several identical envelopes, the repeats get an extra member,
// {"dup":1,"id":…}, which makes them distinct; decoders, crossws's included,
// ignore members they do not know.
//
// # Routed clusters
//
// By default every instance receives every message of the channel
// (broadcast), which is what crossws speaks. With Options.Routed, the driver
// is an edge.RoutedDriver and an instance receives only the messages of the
// topics its Hub has local subscribers for (in any namespace), and those
// sent to its own peers with Hub.SendTo. Topics are hashed into
// Options.RouteBuckets bucket channels (1024 by default): a topic's bucket
// is TopicBucket, the 32-bit FNV-1a hash of the topic modulo the number of
// buckets, and the bucket's channel is BucketChannel,
//
//	es_<first 8 bytes of the SHA-256 of the channel, in hex>_<bucket>
//
// which fits a Postgres identifier whatever the channel's length. A message
// is notified on the bucket channel of its topic, whatever its namespace, so
// a namespace-wide publish (Namespace "") reaches every instance that routes
// its topic, in every namespace; a large message's reference travels on the
// bucket channel too. Every instance of a routed cluster must set Routed and
// the same RouteBuckets. A crossws instance cannot join a routed cluster: it
// neither hears the bucket channels nor publishes on them.
//
// The listening connection LISTENs on the channel itself, for the liveness
// probes, and on the bucket channel of every routed topic: at most
// RouteBuckets + 1 channels. The Hub's Route calls only record what is
// wanted; the listener LISTENs and UNLISTENs in the background, between two
// waits for notifications. A bucket that loses its last routed topic is
// UNLISTENed only after Options.RouteLinger (2 seconds by default), unless a
// topic of it is routed again meanwhile, so that subscribers that come and
// go cost nothing. A new listening connection, after an outage, LISTENs on
// every wanted bucket again. Topics that share a bucket share its
// notifications: a receiver drops, without a report, a message of a topic
// it does not route.
//
// # Large messages
//
// Postgres refuses a NOTIFY payload of NotifyPayloadLimit (8000) bytes or more.
// A message whose envelope is that large is stored as a row of the table
// edgesync_payloads, with a random token of 128 bits, and the notification
// carries a reference to it instead:
//
//	{"edgesync":"ref","id":"<instance id>","ref":<row id>,"token":"<token>"}
//
// Receivers read the row by its id and token, so that a reference with a
// guessed id reads nothing, and each reference at most once in the life of
// the receiver, so that one seen on the channel and notified again is not
// delivered twice by an instance that delivered it (an instance that starts
// later may deliver it once, while the row is younger than the retention). A
// reference is not an envelope (it has no "msg"), so a crossws instance drops
// it as malformed: crossws instances see small messages only. A receiver
// refuses a row older than Options.LargePayloadRetention, and drops the
// message and reports it; the publisher deletes the channel's rows older
// than that soon after they expire, with a timer that runs as long as it
// stores large messages. A stored body larger than the receiver's
// Options.MaxMessageBytes is not read. Every drop is reported at
// edge.StageDelivery.
//
// The table is created by the first large publish, or beforehand by Migrate,
// which also upgrades a table of an earlier version (ALTER TABLE … ADD
// COLUMN IF NOT EXISTS token): the rows stored before the upgrade, which
// have no token, are never read. Upgrading a cluster from a version without
// tokens: run Migrate (as the table's owner), then upgrade the instances;
// while some still run the earlier version, their large messages, whose
// references carry no token, are dropped by the upgraded ones and reported.
// A role that may not create tables (Postgres 15 and later grant no CREATE on
// schema public by default) needs Migrate run once by a role that may, and
// INSERT, SELECT and DELETE on the table and USAGE on its sequence.
//
// # Signed clusters
//
// Anyone who may NOTIFY on the channel can otherwise inject messages. With
// Options.Keys, every envelope and every reference carries an HMAC-SHA256 of
// a shared secret (envelope.Signer), and a notification, or a stored body,
// without a valid one is dropped and reported at edge.StageDelivery with an
// error wrapping envelope.ErrSignature. A crossws instance writes unsigned
// envelopes, so it cannot publish into a signed cluster (it can still read
// its small messages).
//
// # Registry
//
// Registry is an edge.Registry in two tables, edgesync_registry_conns and
// edgesync_registry_subs, scoped by RegistryOptions.Channel so that several
// applications can share them. Expiry is enforced by every query; expired
// rows are pruned by Add. Names are stored as bytes and found by their
// SHA-256 digests, so any id, namespace or topic is kept exactly: NUL bytes,
// invalid UTF-8 and names far longer than an index entry included.
// Attributes are stored as JSON text.
//
// # Pools and poolers
//
// The user's pool is never closed. LISTEN needs a session: a pool that goes
// through a transaction-mode pooler (PgBouncer) cannot listen, but can still
// publish if Options.ConnString names a direct connection for the listener.
package pgsync
