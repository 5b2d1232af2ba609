// Command apigw-emulator serves a local API Gateway WebSocket API whose
// routes are all integrated with one Lambda function, run from its binary
// under a local Lambda Runtime API.
//
// Usage:
//
//	apigw-emulator [flags] -- COMMAND [ARGS...]
//
// for instance, from the repository's root:
//
//	go run ./apigw/emulator/cmd/apigw-emulator -addr 127.0.0.1:8081 -- ./bootstrap
//
// COMMAND is the function: an executable that uses the Lambda Runtime API,
// such as a Go program calling aws-lambda-go's lambda.Start, built as the
// bootstrap of the provided.al2023 runtime. It is started -procs times; each
// copy serves one invocation at a time, as a Lambda execution environment
// does, and one that crashes is restarted.
//
// The command prints the WebSocket URL clients connect to, ws://ADDR/STAGE,
// and the management endpoint, http://ADDR/STAGE, which the function uses
// for PostToConnection, GetConnection and DeleteConnection. The function finds
// the endpoint in its environment as EDGESYNC_APIGW_ENDPOINT, beside the
// variables Lambda sets (AWS_REGION, AWS_LAMBDA_FUNCTION_NAME, dummy AWS
// credentials, ...). The function also gets the command's own environment,
// except the variables whose names begin with AWS_, so that real
// credentials do not leak into it; -env adds variables.
//
// The flags are:
//
//	-addr ADDR           address to serve on (default 127.0.0.1:8081; port 0 picks one)
//	-stage STAGE         the API's stage (default local)
//	-procs N             copies of the function to run (default 1)
//	-route-selection E   route selection expression (default $request.body.action)
//	-routes A,B          the API's custom route keys, besides $connect, $disconnect and $default
//	-route-responses A,B the route keys with a route response ($default may be one): only
//	                     their integration's answers are sent back to the client
//	-idle-timeout D      idle connection timeout (default 10m)
//	-max-duration D      maximum connection duration (default 2h)
//	-timeout D           the function's timeout (default 30s); API Gateway's integration timeout is 29s
//	-env KEY=VALUE       a variable for the function's environment; repeatable
//	-v                   log every connection, invocation error and process event
//
// GET http://ADDR/_emulator/connections lists the live connection ids as a
// JSON array.
//
// SIGINT or SIGTERM stops the command cleanly: every client is closed with
// 1001 Going Away and $disconnect is invoked for it, then the function's
// processes are stopped.
//
// See the package github.com/edgesync/edgesync/apigw/emulator for how
// closely the emulator follows API Gateway.
package main
