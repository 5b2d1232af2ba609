// Package emulator is a local API Gateway WebSocket API.
package emulator
