package tests

import (
	"os"
	"strings"
	"testing"
)

// TestReadmeProgramIsExamplesHello keeps the complete program in the README
// the one that compiles: examples/hello/main.go, whole.
func TestReadmeProgramIsExamplesHello(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	program, err := os.ReadFile("../examples/hello/main.go")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```go\n"+string(program)+"```\n") {
		t.Fatal("README.md's complete program differs from examples/hello/main.go: copy the file into it")
	}
}
