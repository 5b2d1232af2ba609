// Package edge is the sync core of edgesync: a Hub that delivers published
// messages to the peers of this instance and relays them, through a Driver, to
// every other instance of the cluster.
//
// A Hub knows no WebSocket library, no broker and no cloud. Front ends (package
// longlived for sockets held in memory) turn connections into peers; a Gateway
// reaches peers whose sockets an external gateway holds; drivers (packages
// under drivers/) carry messages between instances; the same Hooks run on
// every front end.
//
// The semantics follow the crossws sync backplane: local delivery is
// synchronous and never depends on the backplane; relay between instances is
// best effort (at most once, unordered, nothing queued while the backplane is
// down); a message received from the backplane is delivered locally and never
// relayed again; backplane failures never reach the caller of Publish, they go
// to Options.OnError with the Stage at which they happened.
package edge
