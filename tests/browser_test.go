package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgesync/edgesync/internal/testenv"
)

// TestChatInBrowser runs the chat page in headless Chromium, driven by
// playwright-core on Node (browser/chat.mjs), at the size of a phone: two
// people on a long-lived chat server and one on the chat Lambda under the
// API Gateway emulator, all on one Redis channel. They see who is in the
// room and where, chat, send a private message, come and go; the long-lived
// server is killed, its page says so and stops sending, and reconnects when
// the server is back on the same port.
//
// EDGESYNC_PLAYWRIGHT_NODE_MODULES names a node_modules folder holding
// playwright-core (.ci/run installs one); EDGESYNC_CHROMIUM the browser,
// /usr/bin/chromium by default. EDGESYNC_BROWSER_SCREENSHOTS keeps the
// screenshots in that folder.
func TestChatInBrowser(t *testing.T) {
	modules := os.Getenv("EDGESYNC_PLAYWRIGHT_NODE_MODULES")
	if modules == "" {
		testenv.Unavailable(t, "set EDGESYNC_PLAYWRIGHT_NODE_MODULES to a node_modules folder holding playwright-core (.ci/run does)")
	}
	if _, err := os.Stat(filepath.Join(modules, "playwright-core", "package.json")); err != nil {
		testenv.Unavailable(t, "no playwright-core in EDGESYNC_PLAYWRIGHT_NODE_MODULES: "+err.Error())
	}
	browser := os.Getenv("EDGESYNC_CHROMIUM")
	if browser == "" {
		browser = "/usr/bin/chromium"
	}
	if _, err := exec.LookPath(browser); err != nil {
		testenv.Unavailable(t, "no Chromium (install Debian's chromium, or set EDGESYNC_CHROMIUM): "+err.Error())
	}
	if _, err := exec.LookPath("node"); err != nil {
		testenv.Unavailable(t, "node is not installed")
	}
	t.Parallel()
	redisURL, channel := testenv.RedisURL(t), testenv.Channel(t)

	wsURL := startEmulator(t, lambdaBinary(t), 1, "EDGESYNC_REDIS_URL="+redisURL, "EDGESYNC_CHANNEL="+channel)
	management := "http" + strings.TrimPrefix(wsURL, "ws")
	bin := chatBinary(t)
	// The long-lived server posts to the emulator's peers itself; the
	// emulator takes any credentials.
	vmEnv := []string{"AWS_ACCESS_KEY_ID=local", "AWS_SECRET_ACCESS_KEY=local", "AWS_REGION=us-east-1"}
	vmArgs := []string{"-redis", redisURL, "-channel", channel, "-apigw-endpoint", management}
	vm := startProgram(t, bin, listening, vmEnv, vmArgs...)
	vmPage := "http://" + vm.addr + "/"

	// The Lambda front end's page: the same page, served here, with its
	// WebSocket on the emulated API.
	page := lambdaPage(t, vmPage, wsURL)
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(page)
	}))
	t.Cleanup(site.Close)

	shots := os.Getenv("EDGESYNC_BROWSER_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	node := exec.CommandContext(ctx, "node", filepath.Join("browser", "chat.mjs"))
	node.Env = append(os.Environ(),
		"EDGESYNC_PLAYWRIGHT_NODE_MODULES="+modules,
		"EDGESYNC_CHROMIUM="+browser,
		"CHAT_VM_URL="+vmPage,
		"CHAT_LAMBDA_URL="+site.URL+"/",
		"CHAT_SCREENSHOTS="+shots,
	)
	// Node and the browser it starts are one process group, ended together
	// should the script overrun.
	node.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	node.Cancel = func() error { return syscall.Kill(-node.Process.Pid, syscall.SIGKILL) }
	node.Stderr = testLog{t, "chat.mjs"}
	stdin, err := node.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := node.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	finish := sync.OnceValue(func() error {
		stdin.Close()
		return node.Wait()
	})
	t.Cleanup(func() { // should the test end early
		cancel()
		finish()
	})

	done := false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var step struct {
			Do   string `json:"do"`
			Done bool   `json:"done"`
		}
		if err := json.Unmarshal(sc.Bytes(), &step); err != nil {
			t.Errorf("chat.mjs printed %q: %v", sc.Text(), err)
			continue
		}
		switch {
		case step.Done:
			done = true
		case step.Do == "kill":
			vm.kill(t)
		case step.Do == "restart":
			// The same port, so that the page finds it again.
			vm = startProgram(t, bin, listening, vmEnv, append(vmArgs, "-addr", vm.addr)...)
		default:
			t.Errorf("chat.mjs asked for %q", sc.Text())
			continue
		}
		if step.Do != "" {
			if _, err := io.WriteString(stdin, "ok\n"); err != nil {
				t.Errorf("answer chat.mjs: %v", err)
			}
		}
	}
	if err := finish(); err != nil || !done {
		t.Fatalf("the chat in the browser failed (%v, finished: %v); see the log above", err, done)
	}
	t.Logf("the browser scenario took %v; screenshots in %s", time.Since(start).Round(time.Millisecond), shots)
}

// lambdaPage returns the chat page of the long-lived server at pageURL with
// its WebSocket endpoint changed to wsURL.
func lambdaPage(t *testing.T, pageURL, wsURL string) []byte {
	t.Helper()
	resp, err := http.Get(pageURL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	from := []byte(`<meta name="edgesync-ws-path" content="/_ws">`)
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, from) {
		t.Fatalf("GET %s: %d, without %s", pageURL, resp.StatusCode, from)
	}
	return bytes.Replace(body, from, fmt.Appendf(nil, `<meta name="edgesync-ws-path" content="%s">`, wsURL), 1)
}
