// Package tests holds edgesync's cross-package tests: clusters of instances
// behind real WebSocket servers, with real clients, over every backplane.
package tests
