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
// and EDGESYNC_APIGW_ENDPOINT (the management endpoint; without it the
// handler learns it from the first event).
//
// Elsewhere it serves itself under the local API Gateway emulator
// (apigw/emulator): the page at http://localhost:8081/, the WebSocket API
// at ws://localhost:8081/local and its management API beside it.
//
//	go run ./examples/chat-lambda [-addr :8081] [-redis URL | -postgres URL]
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
	fn, err := newFunction(context.Background(), configFromEnv(os.Getenv), "", nil)
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

// function is the chat as one Lambda instance holds it: a publish-only hub
// on the backplane, the Registry and the Gateway.
type function struct {
	backplane *chatroom.Backplane
	hub       *edge.Hub
	handler   *apigw.Handler
}

// newFunction builds the chat's handler. endpoint is the management
// endpoint ("" learns it from the first event); awsConfig nil loads the
// default AWS configuration from the environment.
func newFunction(ctx context.Context, cfg chatroom.Config, endpoint string, awsConfig *aws.Config) (*function, error) {
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
	hub, err := edge.New(edge.Options{Sync: backplane.Sync, PublishOnly: true, Gateway: gw})
	if err != nil {
		backplane.Close()
		return nil, fmt.Errorf("start hub: %w", err)
	}
	return &function{backplane: backplane, hub: hub, handler: apigw.NewHandler(hub, chatroom.Hooks(), reg, gw)}, nil
}

// Close closes the hub, then the backplane's clients.
func (f *function) Close() {
	f.hub.Close()
	f.backplane.Close()
}
