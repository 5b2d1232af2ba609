package tests

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// awsPrefix begins the import paths of the AWS SDK and the Lambda runtime.
const awsPrefix = "github.com/aws/"

// deps returns the packages that pkgs import, directly or not, with pkgs
// themselves: what a binary built from them links.
func deps(t *testing.T, pkgs ...string) []string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not installed: cannot list the dependencies")
	}
	cmd := exec.Command(gobin, append([]string{"list", "-deps"}, pkgs...)...)
	cmd.Dir = ".." // the module's root
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if exit := (*exec.ExitError)(nil); errors.As(err, &exit) {
			stderr = exit.Stderr
		}
		t.Fatalf("go list -deps %s: %v\n%s", strings.Join(pkgs, " "), err, stderr)
	}
	return strings.Fields(string(out))
}

// A long-lived server that does not ask for the API Gateway front end links
// no AWS code: the core, the drivers and the net/http front end import
// none, so the README's program stays free of it.
func TestLongLivedLinksNoAWS(t *testing.T) {
	for _, pkg := range []string{"./examples/hello", "./longlived", "./edge", "./drivers/..."} {
		for _, dep := range deps(t, pkg) {
			if strings.HasPrefix(dep, awsPrefix) {
				t.Errorf("%s depends on %s", pkg, dep)
			}
		}
	}
}

// examples/chat can ask for the Gateway (-apigw-endpoint), so it links the
// AWS SDK: the check above would see it, were the core to import it.
func TestChatLinksAWS(t *testing.T) {
	for _, dep := range deps(t, "./examples/chat") {
		if strings.HasPrefix(dep, awsPrefix) {
			return
		}
	}
	t.Fatal("examples/chat links no AWS package: the check of TestLongLivedLinksNoAWS cannot tell")
}
