// Package clustersync relays messages between the edgesync instances that run
// as processes on one host, with no broker: the processes share a Unix socket
// and one of them relays for all the others. It is the counterpart of the
// crossws "cluster" driver for Node.
//
// # Election
//
// Every process is given the same Options.Socket. The relay role belongs to
// whoever holds an exclusive flock(2) on the lock file next to the socket
// (Socket + ".lock"). A driver first tries to take that lock without waiting:
// when it gets it, it removes the stale socket file left by an earlier relay,
// if any, listens on the socket and relays; either way it then connects to the
// socket as a client, so the relay's own process sends and receives like any
// other. Any process can start first, and only one ever holds the lock: the
// election is the kernel's, so there is no race to lose.
//
// # Failover
//
// The kernel releases the lock when the relay's process exits, even when it is
// killed with SIGKILL. The other processes then lose their connection and try
// again, first to take the lock, then to connect: the first to take the lock
// becomes the new relay and the others connect to it. They reconnect by the
// rule of every edgesync driver (see edge.Driver's Subscribe): the outage is
// reported once, at edge.StageSubscribe, however long it lasts; recovery is
// silent; attempts back off from 10 ms to 1 s with jitter, and start again
// from 10 ms after a connection succeeds. Messages published
// while a process has no relay are not queued: Publish fails, as at-most-once
// delivery allows. A relay that is closed (Close, Relay.Serve returning)
// removes its socket and releases the lock, and the next election happens at
// once. The lock file itself is left in place: removing it would let two
// processes lock two different files.
//
// A supervisor may run the relay itself with a Relay. Drivers then connect to
// it, but they still take the relay role over if it goes away, unless
// Options.NoRelay is set.
//
// # Publish-only instances
//
// A publish-only Hub (edge.Options.PublishOnly) never subscribes its driver.
// Such a driver is a client only: it never takes the relay role, and keeps
// nothing running until it publishes. Its first Publish connects to the
// relay (which greets it, as any client); a connection that fails is
// forgotten, and the next Publish connects again, to whichever relay holds
// the role by then. While no relay answers, Publish fails with
// ErrNotConnected, at once for a while after a failed attempt (the backoff
// of the reconnect rule), so that an outage costs one attempt per step, not
// one per message.
//
// It never relays because only subscribed instances need a relay, and each
// of them takes the role when it is free (or, with Options.NoRelay, a
// supervisor's Relay holds it): whenever there is someone to deliver to,
// there is a relay, or one is being elected. A publish-only process that
// took the role would hold it for the others for as long as it lived, and a
// short-lived one (a job, a command) would make the cluster fail over each
// time it exits. When nobody subscribes, there is no relay and nobody to
// deliver to: Publish fails, as at-most-once delivery allows.
//
// The relay forwards every frame to every client, a publish-only one too: the
// driver reads and discards them on a goroutine of its own while it is
// connected, so that the relay never finds it too slow. That traffic is the
// cost of a publish-only instance on the relay.
//
// # Socket and lock files
//
// The relay is whoever holds the flock of the file now at Socket + ".lock";
// the socket only tells the others where the relay listens. A relay checks
// both paths once a second (three stat calls), so that someone removing or
// replacing them (a cleaner of temporary files, a mistaken rm) does not cut
// new instances off while the old ones keep relaying:
//
//   - The socket file was removed: the relay listens again at its path,
//     and reports it. The members connected to it never notice; a new
//     instance that started meanwhile keeps trying, and joins within about a
//     second.
//   - Another file, or another socket, was put at the socket's path: the
//     relay never removes what it did not create. It reports the file once
//     and keeps relaying for its members; new instances cannot connect
//     until the file is removed, and the relay then listens again.
//   - The lock file was removed or replaced: the relay takes the lock of the
//     file now at the path (creating it if need be), and keeps relaying. If
//     another relay already holds that lock, having started while the lock
//     file was missing, the relay steps down: it reports it, disconnects its
//     members, which connect to the other relay, and removes nothing of the
//     other's; a Relay's Serve then returns an error wrapping ErrRelayActive.
//
// A relay that has just taken a new lock removes a socket left at the path,
// as one does at startup. A relay that stops removes its socket only while
// the file at the path is still the one it bound. The reports go to
// Relay.OnError, or, for the relay of a driver, to the Hub's OnError at
// edge.StageSubscribe.
//
// # Wire format
//
// The relay speaks a small stream protocol. On accepting a connection it
// sends a greeting ("clustersync/1\n"), once the connection is registered;
// from then on both sides send frames: a uint32 big-endian length, then that
// many bytes: one byte giving the length of the channel name, the channel
// name, and an envelope (package envelope). The relay forwards each frame, as
// it is, to every connected client except the one that sent it; clients drop
// frames of other channels, envelopes they cannot decode (reported at
// edge.StageDelivery) and their own echo.
//
// # Signed clusters
//
// Any process that may connect to the socket can otherwise inject messages.
// With Options.Keys, every envelope carries an HMAC-SHA256 of a shared secret
// (envelope.Signer), and a frame without a valid one is dropped and reported
// at edge.StageDelivery with an error wrapping envelope.ErrSignature. The
// relay forwards frames without reading them and needs no key. A crossws
// instance writes unsigned envelopes, so it cannot publish into a signed
// cluster (it can still read it).
//
// # Limits
//
// One host, Unix only: the processes must share a file system that supports
// flock(2) and Unix sockets, and run as users allowed to use both. A socket
// path is limited to about 100 bytes by the operating system.
//
// A frame holds at most Options.MaxMessageBytes (1 MiB by default): Publish
// refuses a larger message, and the relay disconnects a client that sends a
// larger frame or an empty one (as random bytes read as a length would be);
// the relay does not decode envelopes. Delivery is best effort, at most
// once: a slow client never blocks the relay, because each connection has a
// write queue bounded in bytes (Options.MaxQueueBytes); a client whose queue
// overflows is disconnected, loses what was queued for it, and reconnects.
// A relay process that is stopped without exiting (SIGSTOP) keeps the lock and
// stalls the cluster until it resumes.
package clustersync
