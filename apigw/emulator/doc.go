// Package emulator is a local Amazon API Gateway WebSocket API, for running
// and testing a Lambda function written for one without AWS.
//
// An Emulator is an http.Handler. On one address it serves the WebSocket
// endpoint clients connect to, ws://HOST/{stage}, the management API a
// function calls through the AWS SDK's apigatewaymanagementapi client, at
// http://HOST/{stage}, and the emulator's own GET /_emulator/connections.
// Every route is integrated with one Lambda function, Options.Handler, as a
// Lambda proxy integration: the event is marshalled to JSON, given to the
// handler's Invoke, and the answer is unmarshalled as an
// events.APIGatewayProxyResponse. The handler runs in process (NewHandler),
// or is a Runtime, which runs the function's real binary under a local
// Lambda Runtime API. The command apigw-emulator (in cmd/apigw-emulator)
// serves an Emulator with a Runtime.
//
// The emulator follows API Gateway as the AWS documentation describes it;
// where the documentation is silent, it does what API Gateway is observed to
// do, and where it had to choose, the choice is written below.
//
// # Connecting
//
// An upgrade request to /{stage} (its query string passed on) invokes
// $connect before the WebSocket handshake is accepted. A 2xx statusCode
// accepts it, with the response's headers added to the 101 Switching
// Protocols. A Sec-WebSocket-Protocol header in the response selects the
// subprotocol and is passed through as it is; when the client offered
// subprotocols and $connect answers none, the handshake is accepted without
// one, as API Gateway does, and it is the client's to refuse that (browsers
// do). Any other statusCode is the client's HTTP response, with the
// response's headers and body. An invocation error, a timeout or a malformed
// response (no statusCode) is answered 500 {"message": "Internal server
// error"}. A request to /{stage} that is not a WebSocket handshake is
// answered 426 Upgrade Required.
//
// With Options.Authorizer, the emulator runs it, as $connect's Lambda
// REQUEST authorizer, on the upgrade request before it invokes $connect. An
// authorizer that returns ErrUnauthorized refuses the client with 401
// {"message":"Unauthorized"}, one that returns any other error (its policy
// denies) with 403 {"message":"Forbidden"}, and $connect is not invoked;
// one that fails (a panic, a timeout after Options.InvokeTimeout, a context
// value that is not a string, number or boolean) is answered 500. The
// context it returns is requestContext.authorizer in every event of the
// connection.
//
// A connection is not postable until its $connect has returned 2xx: until
// then PostToConnection, GetConnection and DeleteConnection answer 410
// GoneException, as they do on AWS. It is postable from the moment its 101
// is written. During and after $disconnect it is gone again.
//
// Connection ids, message ids and request ids have API Gateway's form: 11
// random bytes in standard base64, 16 characters ending in "=", such as
// "L0SM9cOFvHcCIhw=".
//
// # Events
//
// Events are shaped as API Gateway sends them to Lambda
// (events.APIGatewayWebsocketProxyRequest, and aws-lambda-go's recorded
// events). Every event's requestContext has routeKey, eventType (CONNECT,
// MESSAGE or DISCONNECT), extendedRequestId and requestId (the same fresh
// id), requestTime ("02/Jan/2006:15:04:05 -0700") and requestTimeEpoch (ms),
// messageDirection "IN", stage, connectedAt (ms), identity.sourceIp (the
// client's IP address) and identity.userAgent, domainName (the Host the
// client used, port included, so that a function deriving its management
// endpoint from domainName and stage finds the emulator), connectionId and
// apiId, and, on a connection Options.Authorizer authorized, authorizer:
// the authorizer's context, as given (principalId among it when the
// authorizer set one), on $connect, on every message and on $disconnect,
// as API Gateway sends it.
//
//   - CONNECT carries headers and multiValueHeaders (the client's, with the
//     Host, X-Forwarded-For, X-Forwarded-Port, X-Forwarded-Proto and
//     X-Amzn-Trace-Id API Gateway adds; names in Go's canonical form, e.g.
//     Sec-Websocket-Key), and queryStringParameters and
//     multiValueQueryStringParameters when there is a query string.
//     headers and queryStringParameters hold a name's last value.
//   - MESSAGE carries body (the text message) and isBase64Encoded false,
//     and requestContext.messageId.
//   - DISCONNECT carries requestContext.disconnectStatusCode and
//     disconnectReason, and the four headers API Gateway sends on
//     $disconnect: Host, and x-api-key, X-Forwarded-For and x-restapi, empty.
//
// # Messages and routes
//
// A message's route is selected by Options.RouteSelectionExpression,
// "$request.body.X" with X a dotted path into the body (by default
// $request.body.action): a JSON body whose selected value is a string equal
// to one of Options.Routes goes to that route, anything else to $default.
//
// Each message is invoked as it arrives, concurrently with the connection's
// other messages and with other connections': API Gateway does not order
// invocations, so neither does the emulator, and a function must not rely on
// two messages being handled in order. A handler from aws-lambda-go's
// lambda.NewHandler reuses its output buffer and is not safe for concurrent
// use; the emulator invokes such a handler one invocation at a time.
// NewHandler makes a handler that is.
//
// Every route is a proxy route, one-way unless it is listed in
// Options.RouteResponses: on a one-way route, as on API Gateway without a
// route response, nothing the integration answers reaches the client (the
// emulator logs a dropped body at debug level), and the function talks to
// the client through the management API. On a two-way route the response
// is sent back to the client as one text frame when its body is not empty
// (a binary frame when isBase64Encoded), whatever its statusCode; a
// response with an empty body, or null, sends nothing. $connect's and
// $disconnect's bodies are never sent. On any route, an integration error
// (the invocation failed, timed out after Options.InvokeTimeout, or
// answered something that is not a JSON object) sends the client API
// Gateway's error frame:
//
//	{"message": "Internal server error", "connectionId":"L0SM9cOFvHcCIhw=", "requestId":"L0SNBFV6vHcF8Ag="}
//
// # Limits and closes
//
// A message over 128 KB (MaxMessageSize) or a frame over 32 KB
// (MaxFrameSize) closes the connection with 1009 Message Too Big; a binary
// message closes it with 1003 Unsupported Data, as API Gateway accepts text
// only. A connection that has carried no message, in either direction, for
// Options.IdleTimeout (10 minutes), or that has lasted Options.MaxDuration (2
// hours), is closed with 1001 Going Away. Pings keep nothing alive.
//
// $disconnect is invoked once per accepted connection, after it has closed,
// with disconnectStatusCode and disconnectReason: the client's close code
// and reason when the client closed, 1006 and "" when it dropped without a
// close frame, 1000 "Connection Closed Normally" after DeleteConnection (the
// client receives 1000 too), and the emulator's own code otherwise (1001
// "Going away", 1009, 1003). Its answer is ignored. Emulator.Close closes
// every connection with 1001 and waits for every invocation, $disconnect
// included, each bounded by Options.InvokeTimeout. An in-process function
// that ignores its context's deadline is waited for one second more, then
// abandoned: Close returns an error counting the abandoned invocations.
//
// # The management API
//
// The management API answers as API Gateway does, so that every AWS SDK
// parses its answers into its typed errors. Point the SDK at
// http://HOST/{stage} (apigatewaymanagementapi.Options.BaseEndpoint); SigV4
// signatures are accepted and not checked. The connection id is the path
// segment after @connections, URL-escaped as the SDK sends it ("=" as %3D)
// or not; "%40connections" is accepted for "@connections".
//
//   - POST /{stage}/@connections/{id}: 200, the body sent to the client as
//     one frame, text when it is valid UTF-8, binary otherwise (AWS
//     documents nothing about binary posts).
//   - GET /{stage}/@connections/{id}: 200 with
//     {"connectedAt":"…","identity":{"sourceIp":"…","userAgent":"…"},"lastActiveAt":"…"},
//     ISO 8601 timestamps in UTC with milliseconds.
//   - DELETE /{stage}/@connections/{id}: 204; the client is closed with 1000.
//
// Errors carry their type in the X-Amzn-ErrorType header:
//
//   - 410 GoneException, empty body, as API Gateway sends it: no such
//     connection, or it is still connecting, closing or closed.
//   - 413 PayloadTooLargeException {"message":"Message too long"}: a POST
//     body over 128 KB.
//   - 403 ForbiddenException {"message":"Forbidden"}: another stage, another
//     method, or a path under /{stage} that is no management call.
//   - 400 BadRequestException {"message":"Invalid connectionId: …"}: an id
//     that is not in API Gateway's form.
//   - 429 LimitExceededException {"message":"Too Many Requests"}: after
//     Emulator.Throttle(n), for the next n calls, so that a client's retries
//     can be tested.
//
// A POST to a client that does not read for 10 seconds drops the client and
// answers 410.
//
// # The emulator's own endpoint
//
// GET /_emulator/connections answers the live connection ids as a JSON
// array of strings, oldest first, as Emulator.Connections returns them.
// Any other path is answered 404 Not Found.
//
// # Running a function binary
//
// A Runtime starts RuntimeOptions.Procs copies of a function's executable
// with a Lambda-like environment (AWS_LAMBDA_RUNTIME_API, AWS_REGION, dummy
// credentials, AWS_LAMBDA_FUNCTION_NAME, _HANDLER, LAMBDA_TASK_ROOT, ...)
// and serves each its own Lambda Runtime API on a loopback port: /next,
// /invocation/{id}/response, /invocation/{id}/error and /init/error, with
// the headers Lambda sends. Each copy runs one invocation at a time; an
// invocation waits for an idle copy. A copy that crashes or reports an init
// error fails the invocation it was running, or the one waiting for it, and
// is restarted with backoff; one that overruns its deadline is killed and
// restarted. Runtime.ColdStarts reports each copy's time from start to its
// first /next.
package emulator
