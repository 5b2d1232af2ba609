package emulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"sort"
)

// authorize runs Options.Authorizer on the upgrade request r, bounded by
// InvokeTimeout. It returns the authorizer's context, or the status that
// refuses the connection (401, 403, or 500 when the authorizer failed) and
// why.
func (e *Emulator) authorize(r *http.Request) (map[string]any, int, error) {
	ctx, cancel := context.WithTimeout(r.Context(), e.opts.InvokeTimeout)
	defer cancel()
	type result struct {
		context map[string]any
		err     error
		panic   error
	}
	done := make(chan result, 1)
	e.mu.Lock()
	e.running++ // Close waits for the call, within bounds
	e.mu.Unlock()
	go func() {
		defer e.handlerReturned()
		var res result
		func() {
			defer func() {
				if p := recover(); p != nil {
					res.panic = fmt.Errorf("authorizer panicked: %v", p)
				}
			}()
			res.context, res.err = e.opts.Authorizer(r.WithContext(ctx))
		}()
		done <- res
	}()
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		return nil, http.StatusInternalServerError, fmt.Errorf("authorizer timed out after %v", e.opts.InvokeTimeout)
	}
	switch {
	case res.panic != nil:
		return nil, http.StatusInternalServerError, res.panic
	case errors.Is(res.err, ErrUnauthorized):
		return nil, http.StatusUnauthorized, res.err
	case res.err != nil:
		return nil, http.StatusForbidden, res.err
	}
	keys := make([]string, 0, len(res.context))
	for k := range res.context {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch v := res.context[k]; v.(type) {
		case string, bool, json.Number, float64, float32,
			int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		default:
			return nil, http.StatusInternalServerError, fmt.Errorf("authorizer context %q: a %T, want a string, number or boolean", k, v)
		}
	}
	if res.context == nil {
		return map[string]any{}, 0, nil
	}
	return maps.Clone(res.context), 0, nil
}

// refuse answers an upgrade request the authorizer refused, as API
// Gateway does.
func refuse(w http.ResponseWriter, status int) {
	typ, body := "InternalServerErrorException", `{"message": "Internal server error"}`
	switch status {
	case http.StatusUnauthorized:
		typ, body = "UnauthorizedException", `{"message":"Unauthorized"}`
	case http.StatusForbidden:
		typ, body = "AccessDeniedException", `{"message":"Forbidden"}`
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-ErrorType", typ)
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}
