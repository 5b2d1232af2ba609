package longlived

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"testing"
)

// bufferConn is a connection whose writes go to a buffer.
type bufferConn struct {
	net.Conn
	out bytes.Buffer
}

func (c *bufferConn) Write(p []byte) (int, error) { return c.out.Write(p) }

// No message frame follows a close frame that the library wrote, even one
// still held in the batch.
func TestNoMessageAfterCloseFrame(t *testing.T) {
	conn := &bufferConn{}
	w := &batchWriter{conn: conn, pool: &sync.Pool{}}
	w.cork()
	if err := w.writeMessage(false, []byte("before")); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte{0x88, 0x02, 0x03, 0xe8}); err != nil { // close 1000
		t.Fatal(err)
	}
	if err := w.writeMessage(false, []byte("after")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("a message after the close frame: %v, want net.ErrClosed", err)
	}
	if err := w.uncork(); err != nil {
		t.Fatal(err)
	}
	want := append([]byte{0x81, 6}, "before\x88\x02\x03\xe8"...)
	if got := conn.out.Bytes(); !bytes.Equal(got, want) {
		t.Errorf("wrote % x, want % x", got, want)
	}
}
