package emulator

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// The management API's error answers, as API Gateway sends them: the error
// type in X-Amzn-ErrorType and, except for GoneException, a JSON body with a
// message.
type apiError struct {
	status  int
	typ     string
	message string // "" sends an empty body
}

var (
	errForbidden = apiError{http.StatusForbidden, "ForbiddenException", "Forbidden"}
	errGone      = apiError{http.StatusGone, "GoneException", ""}
	errTooLarge  = apiError{http.StatusRequestEntityTooLarge, "PayloadTooLargeException", "Message too long"}
	errThrottled = apiError{http.StatusTooManyRequests, "LimitExceededException", "Too Many Requests"}
)

func badConnectionID(id string) apiError {
	return apiError{http.StatusBadRequest, "BadRequestException", "Invalid connectionId: " + id}
}

func (ae apiError) write(w http.ResponseWriter) {
	h := w.Header()
	h.Set("X-Amzn-ErrorType", ae.typ)
	h.Set("X-Amzn-Requestid", newUUID())
	h.Set("Content-Type", "application/json")
	if ae.message == "" {
		h.Set("Content-Length", "0")
		w.WriteHeader(ae.status)
		return
	}
	body, _ := json.Marshal(map[string]string{"message": ae.message})
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(ae.status)
	_, _ = w.Write(body)
}

func writeForbidden(w http.ResponseWriter) { errForbidden.write(w) }

// connectionInfo is GetConnection's answer.
type connectionInfo struct {
	ConnectedAt  string       `json:"connectedAt"`
	Identity     identityInfo `json:"identity"`
	LastActiveAt string       `json:"lastActiveAt"`
}

type identityInfo struct {
	SourceIP  string `json:"sourceIp"`
	UserAgent string `json:"userAgent"`
}

// serveManagement serves /{stage}/@connections/{id}; segs are the escaped
// path segments after @connections.
func (e *Emulator) serveManagement(w http.ResponseWriter, r *http.Request, stage string, segs []string) {
	if stage != e.opts.Stage || len(segs) != 1 || segs[0] == "" {
		writeForbidden(w)
		return
	}
	switch r.Method {
	case http.MethodPost, http.MethodGet, http.MethodDelete:
	default:
		writeForbidden(w)
		return
	}
	if e.throttled() {
		errThrottled.write(w)
		return
	}
	id, err := url.PathUnescape(segs[0])
	if err != nil || !validID(id) {
		badConnectionID(id).write(w)
		return
	}
	c := e.lookup(id)

	switch r.Method {
	case http.MethodPost:
		data, err := io.ReadAll(io.LimitReader(r.Body, MaxMessageSize+1))
		if err != nil {
			apiError{http.StatusBadRequest, "BadRequestException", "Could not read the request body"}.write(w)
			return
		}
		if len(data) > MaxMessageSize {
			errTooLarge.write(w)
			return
		}
		if c == nil {
			errGone.write(w)
			return
		}
		if err := c.post(data); err != nil {
			errGone.write(w)
			return
		}
		w.Header().Set("X-Amzn-Requestid", newUUID())
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)

	case http.MethodGet:
		if c == nil {
			errGone.write(w)
			return
		}
		info := connectionInfo{
			ConnectedAt:  c.connectedAt.UTC().Format(isoLayout),
			Identity:     identityInfo{SourceIP: c.sourceIP, UserAgent: c.userAgent},
			LastActiveAt: time.Unix(0, c.lastActive.Load()).UTC().Format(isoLayout),
		}
		body, _ := json.Marshal(info)
		w.Header().Set("X-Amzn-Requestid", newUUID())
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)

	case http.MethodDelete:
		if c == nil {
			errGone.write(w)
			return
		}
		c.shutdown(closeNormal, reasonDeleted)
		w.Header().Set("X-Amzn-Requestid", newUUID())
		w.WriteHeader(http.StatusNoContent)
	}
}
