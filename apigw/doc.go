// Package apigw is the edgesync front end for API Gateway WebSocket APIs,
// whose connections API Gateway holds while a Lambda function (or any
// backend) handles their events.
//
// A Gateway is the edge.Gateway of such an API: it reaches the connections
// kept in an edge.Registry by posting to them with the API Gateway
// management API (PostToConnection), with bounded concurrency, a deadline on
// every call, retries of throttled calls, and removal of the connections
// API Gateway reports gone. Binary data is posted as base64 text, since API
// Gateway clients receive text frames only (see Payload).
package apigw
