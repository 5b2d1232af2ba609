package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// wsReadBuffer is the size of a client's read buffer: a batch of small
// frames that the server sends in one write is read in one system call.
const wsReadBuffer = 32 << 10

// websocketGUID is the key suffix of RFC 6455, section 1.3.
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// WebSocket opcodes (RFC 6455, section 5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xa
)

// errTooBig ends a connection whose server sent a message longer than the
// read limit.
var errTooBig = errors.New("message longer than the read limit")

// wsConn is the load tool's WebSocket client connection: RFC 6455 without
// extensions, as the chat servers speak it. It is the tool's own, not a
// library's, so that the clients, which share the machine with the
// servers they measure, spend as little as they can per message: a read
// takes the frame header and the payload straight out of a buffered
// reader, with no lock and no allocation. One goroutine reads; writes,
// from any goroutine, are serialized.
type wsConn struct {
	conn      net.Conn
	br        *bufio.Reader // only the reading goroutine uses it
	readLimit int64

	wmu  sync.Mutex
	wbuf []byte // the frame being written
}

// dialWS opens a WebSocket connection to rawURL (ws:// only), bounded by
// ctx, and returns it with the server's handshake response.
func dialWS(ctx context.Context, rawURL string, readLimit int64) (*wsConn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "ws" {
		return nil, fmt.Errorf("%s: only ws:// URLs are served", rawURL)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	// A context that ends before its deadline ends the handshake too.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	c, err := handshake(conn, u, readLimit)
	if !stop() && ctx.Err() != nil {
		err = ctx.Err() // it ended the handshake, or ended as it finished
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return c, nil
}

// handshake makes the opening handshake of RFC 6455, section 4.1, on conn.
func handshake(conn net.Conn, u *url.URL, readLimit int64) (*wsConn, error) {
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req := &http.Request{Method: http.MethodGet, URL: u, Host: u.Host, Header: http.Header{
		"Upgrade":               {"websocket"},
		"Connection":            {"Upgrade"},
		"Sec-Websocket-Key":     {key},
		"Sec-Websocket-Version": {"13"},
	}}
	w := bufio.NewWriter(conn)
	if err := req.Write(w); err != nil {
		return nil, err
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(conn, wsReadBuffer)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, fmt.Errorf("handshake: %s", resp.Status)
	}
	sum := sha1.Sum([]byte(key + websocketGUID))
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") ||
		resp.Header.Get("Sec-Websocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		return nil, errors.New("handshake: not a WebSocket upgrade")
	}
	return &wsConn{conn: conn, br: br, readLimit: readLimit}, nil
}

// readMessage reads the next text or binary message into buf and returns
// its length and whether it fitted; what does not fit is discarded. It
// answers pings, and a close frame with one of its own, which ends the
// connection (io.EOF). Only one goroutine reads.
func (c *wsConn) readMessage(buf []byte) (n int, fits bool, err error) {
	var total int64
	inMessage := false
	for {
		fin, op, length, err := c.readHeader()
		if err != nil {
			return 0, false, err
		}
		if op >= opClose { // a control frame, maybe between fragments
			if length > 125 || !fin {
				return 0, false, fmt.Errorf("control frame %#x of %d bytes", op, length)
			}
			var payload [125]byte
			if _, err := io.ReadFull(c.br, payload[:length]); err != nil {
				return 0, false, err
			}
			switch op {
			case opPing:
				if err := c.write(opPong, payload[:length]); err != nil {
					return 0, false, err
				}
			case opClose:
				_ = c.write(opClose, payload[:min(length, 2)])
				_ = c.conn.Close()
				return 0, false, io.EOF
			}
			continue
		}
		if (op == opContinuation) != inMessage {
			return 0, false, fmt.Errorf("frame with opcode %#x out of sequence", op)
		}
		inMessage = true
		if total += length; total > c.readLimit {
			return 0, false, errTooBig
		}
		k := int(min(length, int64(len(buf)-n)))
		if _, err := io.ReadFull(c.br, buf[n:n+k]); err != nil {
			return 0, false, err
		}
		n += k
		if _, err := c.br.Discard(int(length) - k); err != nil {
			return 0, false, err
		}
		if fin {
			return n, total == int64(n), nil
		}
	}
}

// readHeader reads a frame header from the server, which masks nothing.
func (c *wsConn) readHeader() (fin bool, op byte, length int64, err error) {
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return false, 0, 0, err
	}
	if h[0]&0x70 != 0 || h[1]&0x80 != 0 {
		return false, 0, 0, fmt.Errorf("frame with reserved bits or a mask: %#x %#x", h[0], h[1])
	}
	fin, op, length = h[0]&0x80 != 0, h[0]&0x0f, int64(h[1]&0x7f)
	var ext [8]byte
	switch length {
	case 126:
		if _, err := io.ReadFull(c.br, ext[:2]); err != nil {
			return false, 0, 0, err
		}
		length = int64(binary.BigEndian.Uint16(ext[:2]))
	case 127:
		if _, err := io.ReadFull(c.br, ext[:]); err != nil {
			return false, 0, 0, err
		}
		length = int64(binary.BigEndian.Uint64(ext[:]))
		if length < 0 {
			return false, 0, 0, fmt.Errorf("frame length %#x", ext)
		}
	}
	return fin, op, length, nil
}

// writeText sends p as one text message.
func (c *wsConn) writeText(p []byte) error { return c.write(opText, p) }

// write sends one frame, masked as a client's must be (RFC 6455, section
// 5.3), in one system call.
func (c *wsConn) write(op byte, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := append(c.wbuf[:0], 0x80|op)
	switch n := len(p); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, 0x80|126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, 0x80|127), uint64(n))
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	b = append(b, key[:]...)
	start := len(b)
	b = append(b, p...)
	for i := range b[start:] {
		b[start+i] ^= key[i&3]
	}
	c.wbuf = b
	_, err := c.conn.Write(b)
	return err
}

// closeNow closes the connection without a close handshake.
func (c *wsConn) closeNow() error { return c.conn.Close() }
