package framerelay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

func TestStreamRoundTrip(t *testing.T) {
	var frames [][]byte
	for _, size := range []int{14, 60, 1514, 9018, MaxFrameLen} {
		f := make([]byte, size)
		for i := range f {
			f[i] = byte(i ^ size)
		}
		frames = append(frames, f)
	}
	a, b := net.Pipe()
	go func() {
		for _, f := range frames {
			if err := WriteFrame(a, f); err != nil {
				t.Errorf("WriteFrame %d bytes: %v", len(f), err)
			}
		}
		a.Close()
	}()
	for _, want := range frames {
		got, err := ReadFrame(b)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("ReadFrame = %d bytes, %v; want %d bytes", len(got), err, len(want))
		}
	}
	if _, err := ReadFrame(b); err != io.EOF {
		t.Errorf("ReadFrame at end = %v, want io.EOF", err)
	}
}

func TestStreamLimits(t *testing.T) {
	var buf bytes.Buffer
	for _, size := range []int{0, 13, MaxFrameLen + 1} {
		if err := WriteFrame(&buf, make([]byte, size)); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("WriteFrame of %d bytes = %v, want api.ErrInvalid", size, err)
		}
	}
	if buf.Len() != 0 {
		t.Errorf("rejected frames wrote %d bytes", buf.Len())
	}
	for _, n := range []uint32{0, 13, MaxFrameLen + 1, 1 << 31} {
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], n)
		if _, err := ReadFrame(bytes.NewReader(hdr[:])); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("ReadFrame with length %d = %v, want api.ErrInvalid", n, err)
		}
	}
	if err := WriteFrame(&buf, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	whole := buf.Bytes()
	for _, cut := range []int{2, 4, 50} {
		if _, err := ReadFrame(bytes.NewReader(whole[:cut])); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("stream cut at %d: %v, want io.ErrUnexpectedEOF", cut, err)
		}
	}
}
