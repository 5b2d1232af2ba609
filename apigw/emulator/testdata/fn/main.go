// Command fn is a Lambda function for the emulator's tests, started through
// aws-lambda-go's lambda.Start under the emulator's Runtime API.
//
// FN_INIT=crash makes it exit before it starts; FN_INIT=error makes it report
// an init error. An API Gateway event is answered as a WebSocket API's
// function: $connect accepts, a message "post" is answered by posting
// "posted" to the connection through EDGESYNC_APIGW_ENDPOINT, any other
// message is echoed. Any other payload is {"op": ...}: "echo" answers what
// the function sees, "wait" waits for a GET of "url" to answer, "crash"
// exits, "error" fails, "hang" never answers.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

type request struct {
	Op             string          `json:"op"`
	URL            string          `json:"url"`
	RequestContext json.RawMessage `json:"requestContext"`
}

func main() {
	switch os.Getenv("FN_INIT") {
	case "crash":
		os.Exit(4)
	case "error":
		body := `{"errorMessage":"missing configuration","errorType":"InitError"}`
		resp, err := http.Post("http://"+os.Getenv("AWS_LAMBDA_RUNTIME_API")+"/2018-06-01/runtime/init/error", "application/json", bytes.NewBufferString(body))
		if err == nil {
			resp.Body.Close()
		}
		os.Exit(1)
	}
	lambda.Start(handle)
}

func handle(ctx context.Context, raw json.RawMessage) (any, error) {
	var req request
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, err
	}
	if req.RequestContext != nil {
		return websocketEvent(ctx, raw)
	}
	switch req.Op {
	case "echo":
		lc, _ := lambdacontext.FromContext(ctx)
		deadline, _ := ctx.Deadline()
		env := map[string]string{}
		for _, k := range []string{"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
			"AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION", "_HANDLER", "LAMBDA_TASK_ROOT", "FN_EXTRA"} {
			env[k] = os.Getenv(k)
		}
		return map[string]any{
			"pid": os.Getpid(), "requestId": lc.AwsRequestID, "arn": lc.InvokedFunctionArn,
			"deadline": deadline.UnixMilli(), "env": env, "trace": os.Getenv("_X_AMZN_TRACE_ID"),
		}, nil
	case "wait":
		resp, err := http.Get(req.URL)
		if err != nil {
			return nil, err
		}
		resp.Body.Close()
		return map[string]any{"pid": os.Getpid()}, nil
	case "crash":
		os.Exit(3)
	case "hang":
		time.Sleep(time.Hour)
	case "error":
		return nil, errors.New("asked to fail")
	}
	return nil, fmt.Errorf("unknown op %q", req.Op)
}

func websocketEvent(ctx context.Context, raw json.RawMessage) (events.APIGatewayProxyResponse, error) {
	var ev events.APIGatewayWebsocketProxyRequest
	if err := json.Unmarshal(raw, &ev); err != nil {
		return events.APIGatewayProxyResponse{}, err
	}
	ok := events.APIGatewayProxyResponse{StatusCode: 200}
	if ev.RequestContext.EventType != "MESSAGE" {
		return ok, nil
	}
	if ev.Body != "post" {
		ok.Body = "echo:" + ev.Body
		return ok, nil
	}
	endpoint := os.Getenv("EDGESYNC_APIGW_ENDPOINT") + "/@connections/" + url.PathEscape(ev.RequestContext.ConnectionID)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewBufferString("posted"))
	if err != nil {
		return ok, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ok, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return ok, fmt.Errorf("post: %s %s", resp.Status, b)
	}
	return ok, nil
}
