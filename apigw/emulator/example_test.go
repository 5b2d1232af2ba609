package emulator_test

import (
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/apigw/emulator"
)

// An in-process function behind the emulator: a client connects, its
// message is routed to the "echo" route and answered, then the function's
// side posts to the client through the AWS SDK.
func Example() {
	echo := func(ctx context.Context, ev events.APIGatewayWebsocketProxyRequest) (events.APIGatewayProxyResponse, error) {
		resp := events.APIGatewayProxyResponse{StatusCode: 200}
		if ev.RequestContext.RouteKey == "echo" {
			resp.Body = ev.Body // sent back: the route has a route response
		}
		return resp, nil
	}
	em, err := emulator.New(emulator.Options{
		Handler:        emulator.NewHandler(echo),
		Routes:         []string{"echo"},
		RouteResponses: []string{"echo"},
	})
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewServer(em)
	defer srv.Close()
	defer em.Close()
	ctx := context.Background()

	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/local", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"action":"echo","text":"hi"}`)); err != nil {
		log.Fatal(err)
	}
	_, reply, err := c.Read(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(reply))

	api := apigatewaymanagementapi.New(apigatewaymanagementapi.Options{
		BaseEndpoint: aws.String(srv.URL + "/local"),
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "SECRET", ""),
		HTTPClient:   srv.Client(),
	})
	id := em.Connections()[0]
	if _, err := api.PostToConnection(ctx, &apigatewaymanagementapi.PostToConnectionInput{
		ConnectionId: aws.String(id), Data: []byte("pushed"),
	}); err != nil {
		log.Fatal(err)
	}
	_, pushed, err := c.Read(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(pushed))
	c.Close(websocket.StatusNormalClosure, "")
	// Output:
	// {"action":"echo","text":"hi"}
	// pushed
}

// A function's binary behind the emulator, as the apigw-emulator command
// runs it: three copies of ./bootstrap, each serving one invocation at a
// time, told the management endpoint in EDGESYNC_APIGW_ENDPOINT.
func ExampleNewRuntime() {
	ctx := context.Background()
	rt, err := emulator.NewRuntime(ctx, emulator.RuntimeOptions{
		Command: []string{"./bootstrap"},
		Procs:   3,
		Env:     []string{"EDGESYNC_APIGW_ENDPOINT=http://127.0.0.1:8081/local"},
		Stdout:  os.Stdout,
		Stderr:  os.Stderr,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer rt.Close()
	fmt.Println("cold starts:", rt.ColdStarts())

	em, err := emulator.New(emulator.Options{Handler: rt})
	if err != nil {
		log.Fatal(err)
	}
	defer em.Close()
	// Serve em on 127.0.0.1:8081 with an http.Server.
}
