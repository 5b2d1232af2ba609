//go:build lambda.norpc

package main

import (
	"fmt"
	"os"
)

// serveLocal is not built into the Lambda binary (built with the
// lambda.norpc tag, as template.yaml's Makefile does), which so links no
// emulator and no WebSocket server code.
func serveLocal([]string) int {
	fmt.Fprintln(os.Stderr, "chat-lambda: built for Lambda (AWS_LAMBDA_RUNTIME_API is not set); run it with go run ./examples/chat-lambda to serve it locally")
	return 2
}
