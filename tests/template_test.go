package tests

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/edgesync/edgesync/internal/testenv"
)

// manageConnectionsArn is the one resource the function may manage
// connections on: this API's stage, nothing account-wide.
const manageConnectionsArn = "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/${StageName}/*/@connections/*"

// TestTemplate checks what a deployment of template.yaml relies on: the
// WebSocket routes, the arm64 provided.al2023 function, a ManageConnections
// policy scoped to this API and stage, and the outputs a VM instance needs.
func TestTemplate(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../template.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tpl := string(raw)
	for _, want := range []string{
		"Transform: AWS::Serverless-2016-10-31",
		"ProtocolType: WEBSOCKET",
		"RouteKey: $connect\n",
		"RouteKey: $disconnect\n",
		"RouteKey: $default\n",
		"Runtime: provided.al2023\n",
		"Architectures:\n        - arm64\n",
		"Handler: bootstrap\n",
		"BuildMethod: makefile\n",
		"CodeUri: .\n",
		"Action: execute-api:ManageConnections\n                Resource: !Sub " + manageConnectionsArn + "\n",
	} {
		if !strings.Contains(tpl, want) {
			t.Errorf("template.yaml lacks %q", want)
		}
	}
	if regexp.MustCompile(`(?m)(Resource:\s*|^\s*-\s+)["']?\*["']?\s*$`).MatchString(tpl) {
		t.Error("template.yaml grants a permission on every resource")
	}
	_, outputs, ok := strings.Cut(tpl, "\nOutputs:\n")
	if !ok {
		t.Fatal("template.yaml has no Outputs")
	}
	for _, want := range []string{
		"WebSocketURL:\n    Description: ",
		"Value: !Sub wss://${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${StageName}\n",
		"ManagementEndpoint:\n    Description: ",
		"Value: !Sub https://${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${StageName}\n",
		"ManageConnectionsArn:\n    Description: ",
		"Value: !Sub " + manageConnectionsArn + "\n",
	} {
		if !strings.Contains(outputs, want) {
			t.Errorf("template.yaml's Outputs lack %q", want)
		}
	}
}

// TestTemplateLint runs cfn-lint on template.yaml: no errors, no warnings.
func TestTemplateLint(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("cfn-lint"); err != nil {
		testenv.Unavailable(t, "cfn-lint is not installed")
	}
	if out, err := exec.Command("cfn-lint", "../template.yaml").CombinedOutput(); err != nil {
		t.Fatalf("cfn-lint template.yaml: %v\n%s", err, out)
	}
}

// TestMakefileBuildsChatLambda checks the command sam build runs: a static
// linux/arm64 build of examples/chat-lambda into the artifacts directory.
func TestMakefileBuildsChatLambda(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	dir := t.TempDir()
	cmd := exec.Command("make", "-n", "build-ChatFunction", "ARTIFACTS_DIR="+dir)
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n build-ChatFunction: %v\n%s", err, out)
	}
	for _, want := range []string{"GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0", "go build", "-o " + dir + "/bootstrap", "./examples/chat-lambda"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("make -n build-ChatFunction prints %q, which lacks %q", out, want)
		}
	}
}
