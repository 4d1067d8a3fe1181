package framerelay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/shoalvm/shoal/internal/api"
)

const ethHeaderLen = 14

// MaxFrameLen is the largest frame WriteFrame and ReadFrame accept: a
// maximal IP packet (65535 bytes) behind an Ethernet header with one VLAN
// tag. Captured frames are far smaller (wire-sized segments).
const MaxFrameLen = 65535 + ethHeaderLen + 4

// The stream format is a sequence of records, each a 4-byte big-endian
// length followed by that many bytes of Ethernet frame. There is no stream
// header; end the stream by closing the writer.
const lenPrefix = 4

// WriteFrame writes one length-prefixed frame to w with a single Write call.
func WriteFrame(w io.Writer, f []byte) error {
	if err := checkLen(uint64(len(f))); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	rec := make([]byte, lenPrefix+len(f))
	binary.BigEndian.PutUint32(rec, uint32(len(f)))
	copy(rec[lenPrefix:], f)
	if _, err := w.Write(rec); err != nil {
		return fmt.Errorf("write %d-byte frame: %w", len(f), err)
	}
	return nil
}

// ReadFrame reads one frame written by WriteFrame. It returns io.EOF, and
// only that, when r ends cleanly between frames; a stream cut inside a frame
// gives io.ErrUnexpectedEOF. A length outside 14..MaxFrameLen is an error
// wrapping api.ErrInvalid (the stream is corrupt or not a frame stream).
func ReadFrame(r io.Reader) ([]byte, error) {
	var hdr [lenPrefix]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("read frame length: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if err := checkLen(uint64(n)); err != nil {
		return nil, fmt.Errorf("read frame: length prefix %d: %w", n, err)
	}
	f := make([]byte, n)
	if _, err := io.ReadFull(r, f); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read %d-byte frame: %w", n, err)
	}
	return f, nil
}

func checkLen(n uint64) error {
	switch {
	case n > MaxFrameLen:
		return fmt.Errorf("frame of %d bytes exceeds the %d-byte limit: %w", n, MaxFrameLen, api.ErrInvalid)
	case n < ethHeaderLen:
		return fmt.Errorf("frame of %d bytes is shorter than an Ethernet header: %w", n, api.ErrInvalid)
	}
	return nil
}
