package clustersync

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime/metrics"
	"testing"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/testenv"
)

// fuzzMaxMsg is the frame limit of the fuzzed relay and instances.
const fuzzMaxMsg = 4 << 10

// fuzzDriver builds the driver of an instance with id on channel, for its
// framing only: it is never subscribed.
func fuzzDriver(t *testing.T, channel, id string) (*driver, *testenv.ErrorLog) {
	t.Helper()
	log := testenv.NewErrorLog()
	d, err := New(Options{Socket: "/nonexistent/s", Channel: channel, MaxMessageBytes: fuzzMaxMsg})(edge.Instance{ID: id, Report: log.Report})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d.(*driver), log
}

// receive reads stream as d reads from its relay, through a buffer of size
// bytes, and returns what d delivered and why reading stopped.
func receive(d *driver, stream []byte, size int) ([]edge.Message, error) {
	var got []edge.Message
	err := d.read(bufio.NewReaderSize(bytes.NewReader(stream), size), func(m edge.Message) { got = append(got, m) })
	return got, err
}

// relayChunks forwards stream as the relay forwards what a client sends, and
// returns the chunks it would broadcast and why forwarding stopped.
func relayChunks(stream []byte) ([][]byte, error) {
	var chunks [][]byte
	err := forward(bytes.NewReader(stream), fuzzMaxMsg, func(c []byte) { chunks = append(chunks, c) })
	return chunks, err
}

// splitFrames splits whole frames off the start of b, as the relay must
// have: it returns how many bytes they take and whether they are all valid.
func splitFrames(b []byte) (n int, ok bool) {
	for len(b[n:]) >= 4 {
		size := binary.BigEndian.Uint32(b[n:])
		if checkLen(size, fuzzMaxMsg) != nil || uint64(len(b[n:])) < 4+uint64(size) {
			return n, false
		}
		n += 4 + int(size)
	}
	return n, n == len(b)
}

func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// wellFormed returns s with each byte that is not part of a valid UTF-8
// sequence replaced by U+FFFD, as an envelope carries s.
func wellFormed(s string) string { return string([]rune(s)) }

// FuzzFraming checks the framing of the relay and of the instances.
//
// Arbitrary bytes, as a client or a relay might send them: the relay
// forwards whole valid frames only, and stops at the first invalid one; an
// instance reads them without panicking, reports what it drops, and
// allocates no more than the frame limit beyond what the input holds.
//
// A round trip: the frames that an instance writes for a message, forwarded
// by the relay, are delivered as that message by another instance of the
// channel, and by no instance of another channel nor by the writer itself.
func FuzzFraming(f *testing.F) {
	frame := func(channel, body string) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(1+len(channel)+len(body)))
		return append(append(append(b, byte(len(channel))), channel...), body...)
	}
	wire, _ := envelope.Encode("other", edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("hi")})
	f.Add(frame("c", string(wire)), "c", "/ns", "t", []byte("hello"), false)
	f.Add(append(frame("c", string(wire)), frame("d", string(wire))...), "d", "", "", []byte{0, 1, 0xff}, true)
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "c", "/\xff", "t\xc3", []byte("\xed\xa0\x80"), false)
	f.Add([]byte{0, 0, 0, 0}, "c", "/ns", "t", []byte(nil), false)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}, "c", "/ns", "t", []byte("x"), true)
	f.Add([]byte{0, 1, 0, 0, 9, 'c'}, "c", "/ns", "t", bytes.Repeat([]byte("x"), fuzzMaxMsg), false)
	f.Add(frame("c", "{not json"), "c", "/ns", "t", []byte("x"), false)

	f.Fuzz(func(t *testing.T, stream []byte, channel, ns, topic string, data []byte, bin bool) {
		if channel == "" || len(channel) > MaxChannelLen {
			channel = "c"
		}
		rx, rxLog := fuzzDriver(t, channel, "rx")

		// Arbitrary bytes.
		before := heapAllocs()
		chunks, ferr := relayChunks(stream)
		got, rerr := receive(rx, stream, 64)
		if allocated, limit := heapAllocs()-before, uint64(1<<20+4*fuzzMaxMsg+64*len(stream)); allocated > limit {
			t.Fatalf("reading %d bytes allocated %d bytes, limit %d", len(stream), allocated, limit)
		}
		forwarded := bytes.Join(chunks, nil)
		if !bytes.HasPrefix(stream, forwarded) {
			t.Fatalf("the relay forwarded %q, not a prefix of %q", forwarded, stream)
		}
		for _, c := range chunks {
			if _, ok := splitFrames(c); !ok {
				t.Fatalf("the relay forwarded a chunk that is not whole valid frames: %q", c)
			}
		}
		rest := stream[len(forwarded):]
		n, ok := splitFrames(rest)
		switch {
		case errors.Is(ferr, errBadFrame):
			if n != 0 || ok || len(rest) < 4 || checkLen(binary.BigEndian.Uint32(rest), fuzzMaxMsg) == nil {
				t.Fatalf("the relay rejected %q, which starts with a valid frame header", rest)
			}
		case ferr == io.EOF || errors.Is(ferr, io.ErrUnexpectedEOF):
			if n != 0 || len(rest) >= 4 && checkLen(binary.BigEndian.Uint32(rest), fuzzMaxMsg) != nil {
				t.Fatalf("the relay stopped at the end of the input before %q, which it should have forwarded or rejected", rest)
			}
		default:
			t.Fatalf("forward: %v", ferr)
		}
		if rerr != io.EOF && !errors.Is(rerr, io.ErrUnexpectedEOF) {
			t.Fatalf("read stopped with %v, not at the end of the input", rerr)
		}
		for _, err := range rxLog.Errors(testenv.AnyStage) {
			if !errors.Is(err, envelope.ErrMalformed) && !errors.Is(err, ErrMessageTooLarge) {
				t.Fatalf("reported %v, which wraps neither envelope.ErrMalformed nor ErrMessageTooLarge", err)
			}
		}
		if len(got) > len(stream)/5 {
			t.Fatalf("%d messages delivered from %d bytes", len(got), len(stream))
		}

		// A round trip, through the writer, the relay and a reader.
		tx, _ := fuzzDriver(t, channel, "tx")
		msg := edge.Message{Namespace: ns, Topic: topic, Data: edge.Data{Bytes: data, Binary: bin}}
		small := edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("after")}
		frames, errs := tx.appendFrames(nil, []edge.Message{msg, small})
		want := []edge.Message{msg, small}
		if len(errs) > 0 {
			if len(errs) != 1 || !errors.Is(errs[0], ErrMessageTooLarge) {
				t.Fatalf("appendFrames: %v", errs)
			}
			want = want[1:]
		}
		chunks, ferr = relayChunks(frames)
		if ferr != io.EOF || !bytes.Equal(bytes.Join(chunks, nil), frames) {
			t.Fatalf("the relay forwarded %d of the %d bytes of the writer's frames: %v", len(bytes.Join(chunks, nil)), len(frames), ferr)
		}
		for _, size := range []int{64, maxChunk} {
			rx, rxLog := fuzzDriver(t, channel, "rx")
			got, err := receive(rx, frames, size)
			if err != io.EOF {
				t.Fatalf("read: %v", err)
			}
			if rxLog.Count(testenv.AnyStage) > 0 {
				t.Fatalf("the reader of the writer's frames reported: %v", rxLog)
			}
			if len(got) != len(want) {
				t.Fatalf("delivered %d messages, want %d", len(got), len(want))
			}
			for i, g := range got {
				w := want[i]
				wantData := w.Data.Bytes
				if !w.Data.Binary {
					wantData = []byte(wellFormed(string(wantData)))
				}
				if g.Namespace != wellFormed(w.Namespace) || g.Topic != wellFormed(w.Topic) ||
					g.Data.Binary != w.Data.Binary || !bytes.Equal(g.Data.Bytes, wantData) {
					t.Fatalf("delivered %+v, want %+v", g, w)
				}
			}
		}
		otherChannel := channel + "x"
		if len(channel) == MaxChannelLen {
			otherChannel = channel[1:]
		}
		other, _ := fuzzDriver(t, otherChannel, "other")
		if got, _ := receive(other, frames, 64); len(got) > 0 {
			t.Fatalf("an instance of another channel received %+v", got)
		}
		if got, _ := receive(tx, frames, 64); len(got) > 0 {
			t.Fatalf("the writer received its own messages: %+v", got)
		}
	})
}
