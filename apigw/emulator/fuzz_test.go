package emulator_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/edgesync/edgesync/apigw/emulator"
)

// documented are the statuses the emulator answers outside a handshake.
var documented = map[int]bool{200: true, 204: true, 400: true, 403: true, 404: true, 405: true, 410: true, 413: true, 426: true, 429: true}

// FuzzManagementPath feeds arbitrary methods, paths and bodies to the
// emulator, with a live connection among them: it never panics and always
// answers a documented status, management errors with their type and a JSON
// or empty body.
func FuzzManagementPath(f *testing.F) {
	fx := start(f, emulator.Options{}, nil)
	c, conn := fx.dial(f, "", nil)
	go func() { // the client takes whatever is posted to it
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	esc := strings.NewReplacer("=", "%3D", "+", "%2B", "/", "%2F").Replace(conn.id())
	for _, seed := range [][3]string{
		{"POST", "/local/@connections/" + esc, "hi"},
		{"POST", "/local/@connections/" + conn.id(), "\xff"},
		{"GET", "/local/@connections/" + esc, ""},
		{"GET", "/local/%40connections/" + esc, ""},
		{"DELETE", "/local/@connections/AAAAAAAAAAAAAAA%3D", ""},
		{"PATCH", "/local/@connections/" + esc, ""},
		{"POST", "/prod/@connections/" + esc, ""},
		{"POST", "/local/@connections/%zz", ""},
		{"POST", "/local/@connections/", ""},
		{"GET", "/local/@connections/a/b", ""},
		{"GET", "/local", ""},
		{"GET", "/local/x", ""},
		{"GET", "/_emulator/connections", ""},
		{"PUT", "/_emulator/connections", ""},
		{"GET", "/_emulator/", ""},
		{"GET", "/%zz", ""},
		{"GET", "//@connections/", ""},
		{"DELETE", "/local/@connections/" + esc, ""},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	f.Fuzz(func(t *testing.T, method, path, body string) {
		req, err := http.NewRequest(method, "http://emulator.test"+path, strings.NewReader(body))
		if err != nil {
			t.Skip()
		}
		rec := httptest.NewRecorder()
		fx.em.ServeHTTP(rec, req)
		if !documented[rec.Code] {
			t.Fatalf("%s %q answered %d", method, path, rec.Code)
		}
		if et := rec.Header().Get("X-Amzn-ErrorType"); et != "" {
			if b := rec.Body.Bytes(); len(b) > 0 && !json.Valid(b) {
				t.Fatalf("%s %q answered %s with %q", method, path, et, b)
			}
		}
	})
}
