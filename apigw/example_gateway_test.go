package apigw_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/edgesync/edgesync/apigw"
	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
)

func ExampleGateway() {
	// A stand-in for the management API of the stage "prod", which prints
	// what is posted.
	var mu sync.Mutex
	var posts []string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		posts = append(posts, fmt.Sprintf("%s %s %s", r.Method, r.URL.Path, body))
		mu.Unlock()
	}))
	defer api.Close()

	ctx := context.Background()
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	gw, err := apigw.NewGateway(ctx, apigw.GatewayOptions{
		Registry: reg,
		Endpoint: api.URL + "/prod", // https://{api-id}.execute-api.{region}.amazonaws.com/prod
		Config: &aws.Config{
			Region:      "us-east-1",
			Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	// The $connect and subscribe events fill the Registry.
	for _, id := range []string{"alice", "bob"} {
		reg.Add(ctx, edge.Conn{ID: id, Namespace: "/chat"})
		reg.Subscribe(ctx, id, "lobby")
	}

	// alice publishes: everyone else in /chat gets it.
	if err := gw.Deliver(ctx, edge.Message{Namespace: "/chat", Topic: "lobby", Data: edge.Text("hi")}, "alice"); err != nil {
		fmt.Println(err)
	}
	// Binary data arrives as base64 text.
	if err := gw.Deliver(ctx, edge.Message{Topic: "lobby", Data: edge.Binary([]byte{1, 2, 3})}, ""); err != nil {
		fmt.Println(err)
	}

	slices.Sort(posts)
	for _, p := range posts {
		fmt.Println(p)
	}
	// Output:
	// POST /prod/@connections/alice AQID
	// POST /prod/@connections/bob AQID
	// POST /prod/@connections/bob hi
}

func ExampleGateway_SetEndpoint() {
	ctx := context.Background()
	// In a Lambda function: region and credentials come from the
	// environment, and the endpoint from the first event.
	gw, err := apigw.NewGateway(ctx, apigw.GatewayOptions{
		Registry: memsync.NewRegistry(memsync.RegistryOptions{}),
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	// In the handler, with the event's request context:
	domainName, stage := "abc123.execute-api.us-east-1.amazonaws.com", "prod"
	gw.SetEndpoint("https://" + domainName + "/" + stage)
	fmt.Println(gw.Endpoint())
}
