// Package apigw is the edgesync front end for API Gateway WebSocket APIs,
// whose connections API Gateway holds while a Lambda function handles their
// events. The same edge.Hooks that run on a long-lived server (package
// longlived) run here.
//
// A Handler handles the events: $connect runs Hooks.Upgrade on the client's
// rebuilt upgrade request and records the accepted connection in an
// edge.Registry, then runs Hooks.Open; $default and custom routes rebuild
// the peer from the Registry and run Hooks.Message; $disconnect runs
// Hooks.Close and forgets the connection. Before returning, the handler
// waits with Hub.Flush for what the hooks published, because Lambda freezes
// the process once the handler has returned.
//
// A Gateway is the edge.Gateway of such an API: it reaches the connections
// kept in the Registry by posting to them with the API Gateway management
// API (PostToConnection), with bounded concurrency, a deadline on every
// call, retries of throttled calls, and removal of the connections API
// Gateway reports gone. Binary data is posted as base64 text, since API
// Gateway clients receive text frames only (see Payload).
//
// # What a peer held by API Gateway can do
//
// A peer is rebuilt for every event from the Registry: its namespace and
// attributes survive between invocations, on any Lambda instance, but
// nothing else does. Send posts to the connection, except during Hooks.Open:
// API Gateway refuses posts until $connect has returned, so Send then fails
// with ErrNotConnected. Subscribe, Unsubscribe and Topics use the Registry;
// Publish goes through the Hub, to the topic's other connections through
// the Gateway and to long-lived instances through the backplane. Close
// deletes the connection (API Gateway closes it with a status of its own, and
// the $disconnect event that follows runs Hooks.Close); during Hooks.Open it
// refuses the connection instead.
//
// # The hub of a Lambda instance
//
// A Lambda instance holds no peers in memory, so its Hub is publish-only
// (edge.Options.PublishOnly): it relays out through its driver and keeps no
// SUBSCRIBE or LISTEN connection of its own. Make the Hub, the Registry, the
// Gateway and their clients once per cold start, outside the handler.
//
// # Namespaces
//
// The default namespace is edge.DefaultNamespace of the rebuilt request:
// its URL path, which on API Gateway is "/" and the stage ("/prod"). An
// application that runs on both front ends sets Accept.Namespace in
// Hooks.Upgrade so that its clients meet in one namespace.
package apigw
