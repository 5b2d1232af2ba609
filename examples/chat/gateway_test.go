package main

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestParseConfigCluster(t *testing.T) {
	env := map[string]string{
		"EDGESYNC_REDIS_URL":      "redis://127.0.0.1:6379/0",
		"EDGESYNC_APIGW_ENDPOINT": "https://abc123.execute-api.eu-west-1.amazonaws.com/prod",
		"EDGESYNC_INSTANCE_NAME":  "vm one",
		"EDGESYNC_PRESENCE_TTL":   "6s",
	}
	getenv := func(k string) string { return env[k] }
	cfg, err := parseConfig(nil, getenv, io.Discard)
	if err != nil || cfg.apigw != env["EDGESYNC_APIGW_ENDPOINT"] || cfg.name != "vm one" || cfg.presenceTTL != 6*time.Second {
		t.Fatalf("from the environment: %+v, %v", cfg, err)
	}
	cfg, err = parseConfig([]string{"-apigw-endpoint", "http://localhost:8081/local", "-name", "two", "-presence-ttl", "3s"}, getenv, io.Discard)
	if err != nil || cfg.apigw != "http://localhost:8081/local" || cfg.name != "two" || cfg.presenceTTL != 3*time.Second {
		t.Fatalf("flags override the environment: %+v, %v", cfg, err)
	}
	cfg, err = parseConfig(nil, func(string) string { return "" }, io.Discard)
	if err != nil || cfg.apigw != "" || cfg.name != "" || cfg.presenceTTL != 15*time.Second {
		t.Fatalf("defaults: %+v, %v", cfg, err)
	}
	// A bad EDGESYNC_PRESENCE_TTL is an error unless the flag overrides it.
	bad := func(k string) string { return map[string]string{"EDGESYNC_PRESENCE_TTL": "soon"}[k] }
	if _, err := parseConfig(nil, bad, io.Discard); err == nil || !strings.Contains(err.Error(), "EDGESYNC_PRESENCE_TTL") {
		t.Errorf("EDGESYNC_PRESENCE_TTL=soon: %v", err)
	}
	if _, err := parseConfig([]string{"-presence-ttl", "5s"}, bad, io.Discard); err != nil {
		t.Errorf("-presence-ttl over a bad EDGESYNC_PRESENCE_TTL: %v", err)
	}
	for _, args := range [][]string{
		{"-apigw-endpoint", "http://localhost:8081/local"},                       // no Registry
		{"-apigw-endpoint", "http://localhost:8081/local", "-cluster", "/tmp/s"}, // none either
		{"-redis", "redis://x", "-apigw-endpoint", "localhost:8081"},
		{"-redis", "redis://x", "-apigw-endpoint", "ftp://h/x"},
		{"-presence-ttl", "1ms"},
		{"-presence-ttl", "-1s"},
	} {
		var out strings.Builder
		if _, err := parseConfig(args, func(string) string { return "" }, &out); err == nil || !strings.Contains(out.String(), "Usage: chat") {
			t.Errorf("chat %q accepted (or printed no usage):\n%s", args, out.String())
		}
	}
}

// A local emulator takes any credentials: without configured ones, the
// server signs with dummy ones, so that it joins without an AWS account.
func TestLoadAWSConfigForTheEmulator(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/none")
	ctx := context.Background()
	cfg, err := loadAWSConfig(ctx, "http://127.0.0.1:8081/local")
	if err != nil {
		t.Fatal(err)
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil || creds.AccessKeyID != "local" || cfg.Region != "us-east-1" {
		t.Fatalf("credentials %+v, %v; region %q", creds, err, cfg.Region)
	}

	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	cfg, err = loadAWSConfig(ctx, "http://localhost:8081/local")
	if err != nil {
		t.Fatal(err)
	}
	if creds, err := cfg.Credentials.Retrieve(ctx); err != nil || creds.AccessKeyID != "AKIDEXAMPLE" {
		t.Fatalf("configured credentials not used: %+v, %v", creds, err)
	}
	// A real endpoint: its region from the host name, the credentials
	// from the chain, never dummy ones.
	cfg, err = loadAWSConfig(ctx, "https://abc123.execute-api.eu-west-1.amazonaws.com/prod")
	if err != nil || cfg.Region != "eu-west-1" {
		t.Fatalf("region %q, %v", cfg.Region, err)
	}
	if creds, err := cfg.Credentials.Retrieve(ctx); err != nil || creds.AccessKeyID != "AKIDEXAMPLE" {
		t.Fatalf("credentials %+v, %v", creds, err)
	}
}

func TestInstanceName(t *testing.T) {
	if got := instanceName(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}); got != "vm 127.0.0.1:8080" {
		t.Errorf("instanceName(127.0.0.1:8080) = %q", got)
	}
	if got := instanceName(&net.TCPAddr{IP: net.IPv6unspecified, Port: 8080}); !strings.HasPrefix(got, "vm ") || !strings.HasSuffix(got, ":8080") || strings.Contains(got, "::") {
		t.Errorf("instanceName([::]:8080) = %q, want the host name", got)
	}
}
