// Command chat-lambda is the chat room of examples/chat as an AWS Lambda
// function behind an API Gateway WebSocket API: the same hooks, the same page
// and the same relay contract. Clients of both share one room when they share
// a backplane.
//
// In Lambda (AWS_LAMBDA_RUNTIME_API is set), it handles the API's events
// with apigw.Handler. The environment configures it, as template.yaml sets
// it: EDGESYNC_CHANNEL, EDGESYNC_REDIS_URL or EDGESYNC_POSTGRES_URL (the
// Registry of connections and the backplane; neither keeps the Registry in
// memory, which only one warm Lambda instance can use), EDGESYNC_SECRET,
// EDGESYNC_APIGW_ENDPOINT (the management endpoint; without it the
// handler learns it from the first event) and EDGESYNC_INSTANCE_NAME (the
// instance name the room shows for its clients, "lambda" by default).
//
// The room is examples/chat's, with its commands (who, hello, dm) and its
// join and leave notices (see package examples/internal/chatroom). On Redis
// and Postgres the function lists, besides the connections API Gateway
// holds, the clients of the long-lived servers on the same channel, which
// record them in the backplane's presence Registry; it records nothing
// itself, holding no client in memory. A direct message to a client of a
// long-lived server goes through the backplane.
//
// Elsewhere it serves itself under the local API Gateway emulator
// (apigw/emulator): the page at http://localhost:8081/, the WebSocket API
// at ws://localhost:8081/local and its management API beside it.
//
//	go run ./examples/chat-lambda [-addr :8081] [-redis URL | -postgres URL] [-name NAME]
//
// The flags default to the environment variables above.
package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/edgesync/edgesync/apigw"
	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/examples/internal/chatroom"
)

func main() {
	if os.Getenv("AWS_LAMBDA_RUNTIME_API") == "" {
		os.Exit(serveLocal(os.Args[1:]))
	}
	// Made once per cold start, reused by every invocation.
	// The management endpoint comes from EDGESYNC_APIGW_ENDPOINT, or
	// from the first event.
	fn, err := newFunction(context.Background(), configFromEnv(os.Getenv), instanceName(os.Getenv), "", nil)
	if err != nil {
		slog.Error("chat-lambda", "err", err)
		os.Exit(1)
	}
	lambda.Start(fn.handler.Handle)
}

// configFromEnv reads the backplane from the environment.
func configFromEnv(getenv func(string) string) chatroom.Config {
	return chatroom.Config{
		Redis:    getenv("EDGESYNC_REDIS_URL"),
		Postgres: getenv("EDGESYNC_POSTGRES_URL"),
		Channel:  cmp.Or(getenv("EDGESYNC_CHANNEL"), "edgesync-chat"),
		Secret:   getenv("EDGESYNC_SECRET"),
	}
}

// instanceName is the instance name the room shows for the function's
// clients: EDGESYNC_INSTANCE_NAME, or "lambda".
func instanceName(getenv func(string) string) string {
	return cmp.Or(getenv("EDGESYNC_INSTANCE_NAME"), "lambda")
}

// function is the chat as one Lambda instance holds it: a publish-only hub
// on the backplane, the Registry and the Gateway.
type function struct {
	backplane *chatroom.Backplane
	hub       *edge.Hub
	handler   *apigw.Handler
}

// newFunction builds the chat's handler; name is the instance name of its
// clients. endpoint is the management endpoint ("" learns it from the first
// event); awsConfig nil loads the default AWS configuration from the
// environment.
func newFunction(ctx context.Context, cfg chatroom.Config, name, endpoint string, awsConfig *aws.Config) (*function, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	backplane, err := chatroom.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	reg := backplane.Registry
	if reg == nil {
		reg = memsync.NewRegistry(memsync.RegistryOptions{})
	}
	gw, err := apigw.NewGateway(ctx, apigw.GatewayOptions{Registry: reg, Endpoint: endpoint, Config: awsConfig})
	if err != nil {
		backplane.Close()
		return nil, err
	}
	// The hub lists the peers the long-lived instances record in Presence;
	// holding none in memory, it records none.
	hub, err := edge.New(edge.Options{Sync: backplane.Sync, PublishOnly: true, Gateway: gw, Presence: backplane.Presence})
	if err != nil {
		backplane.Close()
		return nil, fmt.Errorf("start hub: %w", err)
	}
	return &function{backplane: backplane, hub: hub, handler: apigw.NewHandler(hub, chatroom.Hooks(hub, name), reg, gw)}, nil
}

// Close closes the hub, then the backplane's clients.
func (f *function) Close() {
	f.hub.Close()
	f.backplane.Close()
}
