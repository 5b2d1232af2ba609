package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"

	"github.com/edgesync/edgesync/apigw"
	"github.com/edgesync/edgesync/edge"
)

// newGateway returns the Gateway that posts to the connections of the API
// Gateway WebSocket API at endpoint, which reg keeps.
func newGateway(ctx context.Context, endpoint string, reg edge.Registry) (*apigw.Gateway, error) {
	if reg == nil {
		return nil, errors.New("-apigw-endpoint needs the Registry of a -redis or -postgres backplane")
	}
	awsConfig, err := loadAWSConfig(ctx, endpoint)
	if err != nil {
		return nil, err
	}
	gw, err := apigw.NewGateway(ctx, apigw.GatewayOptions{Registry: reg, Endpoint: endpoint, Config: awsConfig})
	if err != nil {
		return nil, fmt.Errorf("-apigw-endpoint: %w", err)
	}
	return gw, nil
}

// loadAWSConfig loads the AWS configuration from the default chain. The
// region, when none is configured, is the one in endpoint's host name. An
// endpoint on a loopback address over http is the local emulator, which
// takes any credentials: it gets dummy ones, and region us-east-1, when
// none are configured.
func loadAWSConfig(ctx context.Context, endpoint string) (*aws.Config, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("-apigw-endpoint: %w", err)
	}
	local := u.Scheme == "http" && isLoopback(u.Hostname())
	var opts []func(*awsconfig.LoadOptions) error
	if local {
		// No instance metadata lookup, which waits for a timeout off EC2.
		opts = append(opts, awsconfig.WithEC2IMDSClientEnableState(imds.ClientDisabled))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("-apigw-endpoint: load the AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = regionOf(u.Hostname())
	}
	if local {
		cfg.Region = cmp.Or(cfg.Region, "us-east-1")
		if !hasCredentials(ctx, cfg) {
			cfg.Credentials = credentials.NewStaticCredentialsProvider("local", "local", "")
		}
	}
	return &cfg, nil
}

// hasCredentials reports whether cfg's credential chain yields credentials.
func hasCredentials(ctx context.Context, cfg aws.Config) bool {
	if cfg.Credentials == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := cfg.Credentials.Retrieve(ctx)
	return err == nil
}

// isLoopback reports whether host is localhost or a loopback IP address.
func isLoopback(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// regionOf returns the region in an API Gateway host name,
// {api-id}.execute-api.{region}.amazonaws.com, or "".
func regionOf(host string) string {
	parts := strings.Split(host, ".")
	if len(parts) >= 4 && parts[1] == "execute-api" && strings.HasPrefix(strings.Join(parts[3:], "."), "amazonaws.com") {
		return parts[2]
	}
	return ""
}
