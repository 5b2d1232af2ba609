package emulator

import (
	"bytes"
	"context"
	"reflect"
	"sync"

	"github.com/aws/aws-lambda-go/lambda"
)

// NewHandler returns a lambda.Handler running handlerFunc in process, like
// lambda.NewHandler, that is safe for concurrent invocations as the
// Emulator makes them. handlerFunc takes the forms lambda.Start documents,
// e.g. func(context.Context, events.APIGatewayWebsocketProxyRequest)
// (events.APIGatewayProxyResponse, error).
//
// A handler made by lambda.NewHandler reuses its output buffer from one
// invocation to the next: on Lambda, one process runs one invocation at a
// time. NewHandler gives every concurrent invocation a handler of its own.
func NewHandler(handlerFunc any) lambda.Handler {
	h := &concurrentHandler{}
	h.pool.New = func() any { return lambda.NewHandler(handlerFunc) }
	return h
}

type concurrentHandler struct {
	pool sync.Pool
}

// Invoke implements lambda.Handler.
func (h *concurrentHandler) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	lh := h.pool.Get().(lambda.Handler)
	defer h.pool.Put(lh)
	out, err := lh.Invoke(ctx, payload)
	return bytes.Clone(out), err
}

// lambdaPkg is the package of aws-lambda-go's handlers.
var lambdaPkg = reflect.TypeFor[lambda.Handler]().PkgPath()

// concurrencySafe reports whether h may be invoked concurrently: every
// handler but aws-lambda-go's own (from lambda.NewHandler), which the
// Emulator invokes one at a time.
func concurrencySafe(h lambda.Handler) bool {
	t := reflect.TypeOf(h)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.PkgPath() != lambdaPkg
}
