package framerelay

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// vnetHdrLen is the size of struct virtio_net_hdr that PACKET_VNET_HDR puts
// in front of every received frame.
const vnetHdrLen = 10

// vnetHdr is struct virtio_net_hdr. A packet socket writes it in host byte
// order (virtio legacy endianness).
type vnetHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

func parseVnetHdr(b []byte) vnetHdr {
	return vnetHdr{
		flags:      b[0],
		gsoType:    b[1],
		hdrLen:     binary.NativeEndian.Uint16(b[2:]),
		gsoSize:    binary.NativeEndian.Uint16(b[4:]),
		csumStart:  binary.NativeEndian.Uint16(b[6:]),
		csumOffset: binary.NativeEndian.Uint16(b[8:]),
	}
}

// errUnsupportedGSO marks offloaded frames normalize cannot split (UDP
// fragmentation offload, UDP segmentation offload, odd headers).
var errUnsupportedGSO = errors.New("unsupported segmentation offload")

// normalize turns one frame as the kernel handed it to a tap with offloads
// (a TSO super-frame and/or a frame whose L4 checksum is left for the
// device) into plain wire frames: TCP super-frames are cut into gso_size
// segments and every checksum is filled in, so that the frames can be sent
// on any tap, whatever its offload settings. The result never aliases frame.
func normalize(h vnetHdr, frame []byte) ([][]byte, error) {
	switch h.gsoType &^ unix.VIRTIO_NET_HDR_GSO_ECN {
	case unix.VIRTIO_NET_HDR_GSO_NONE:
		out := append([]byte(nil), frame...)
		if h.flags&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
			if err := finishChecksum(out, int(h.csumStart), int(h.csumOffset)); err != nil {
				return nil, err
			}
		}
		return [][]byte{out}, nil
	case unix.VIRTIO_NET_HDR_GSO_TCPV4, unix.VIRTIO_NET_HDR_GSO_TCPV6:
		return segmentTCP(frame, int(h.gsoSize))
	default:
		return nil, fmt.Errorf("gso type %#x: %w", h.gsoType, errUnsupportedGSO)
	}
}

// finishChecksum completes a CHECKSUM_PARTIAL frame: the 16-bit field at
// start+off holds the pseudo-header sum, and the checksum covers everything
// from start to the end of the frame.
func finishChecksum(frame []byte, start, off int) error {
	if start+off+2 > len(frame) {
		return fmt.Errorf("checksum at %d+%d outside a %d-byte frame: %w", start, off, len(frame), errUnsupportedGSO)
	}
	c := ^fold(sum16(frame[start:], 0))
	if c == 0 && off == 6 { // UDP sends a zero checksum as all ones
		c = 0xffff
	}
	binary.BigEndian.PutUint16(frame[start+off:], c)
	return nil
}

// l3Start returns the offset of the network header and its EtherType,
// skipping 802.1Q/802.1ad tags.
func l3Start(frame []byte) (int, uint16) {
	off := 12
	for off+2 <= len(frame) {
		et := binary.BigEndian.Uint16(frame[off:])
		if et != 0x8100 && et != 0x88a8 {
			return off + 2, et
		}
		off += 4
	}
	return len(frame), 0
}

// segmentTCP cuts a TCP super-frame into segments of at most mss payload
// bytes, the way the kernel's software GSO does: headers copied, IPv4 ID
// incremented, sequence numbers advanced, CWR kept only on the first
// segment and FIN/PSH only on the last, and all checksums recomputed.
func segmentTCP(frame []byte, mss int) ([][]byte, error) {
	l3, et := l3Start(frame)
	var l4 int
	switch {
	case et == 0x0800 && l3+20 <= len(frame):
		l4 = l3 + int(frame[l3]&0x0f)*4
		if frame[l3+9] != unix.IPPROTO_TCP {
			return nil, fmt.Errorf("IPv4 protocol %d in a TCP super-frame: %w", frame[l3+9], errUnsupportedGSO)
		}
	case et == 0x86dd && l3+40 <= len(frame):
		l4 = l3 + 40
		if frame[l3+6] != unix.IPPROTO_TCP {
			return nil, fmt.Errorf("IPv6 next header %d in a TCP super-frame: %w", frame[l3+6], errUnsupportedGSO)
		}
	default:
		return nil, fmt.Errorf("EtherType %#04x in a TCP super-frame: %w", et, errUnsupportedGSO)
	}
	if l4+20 > len(frame) {
		return nil, fmt.Errorf("truncated TCP header: %w", errUnsupportedGSO)
	}
	hdrEnd := l4 + int(frame[l4+12]>>4)*4
	if hdrEnd > len(frame) || mss <= 0 {
		return nil, fmt.Errorf("bad TCP header length or gso_size %d: %w", mss, errUnsupportedGSO)
	}
	payload := frame[hdrEnd:]
	n := max(1, (len(payload)+mss-1)/mss)
	seq := binary.BigEndian.Uint32(frame[l4+4:])
	flags := frame[l4+13]
	id := binary.BigEndian.Uint16(frame[l3+4:])
	out := make([][]byte, 0, n)
	for i := range n {
		chunk := payload[min(i*mss, len(payload)):min((i+1)*mss, len(payload))]
		seg := make([]byte, hdrEnd+len(chunk))
		copy(seg, frame[:hdrEnd])
		copy(seg[hdrEnd:], chunk)
		tcpLen := len(seg) - l4
		if et == 0x0800 {
			binary.BigEndian.PutUint16(seg[l3+2:], uint16(len(seg)-l3))
			binary.BigEndian.PutUint16(seg[l3+4:], id+uint16(i))
			seg[l3+10], seg[l3+11] = 0, 0
			binary.BigEndian.PutUint16(seg[l3+10:], ^fold(sum16(seg[l3:l4], 0)))
		} else {
			binary.BigEndian.PutUint16(seg[l3+4:], uint16(tcpLen))
		}
		binary.BigEndian.PutUint32(seg[l4+4:], seq+uint32(i*mss))
		f := flags
		if i > 0 {
			f &^= 0x80 // CWR
		}
		if i < n-1 {
			f &^= 0x01 | 0x08 // FIN, PSH
		}
		seg[l4+13] = f
		seg[l4+16], seg[l4+17] = 0, 0
		binary.BigEndian.PutUint16(seg[l4+16:], ^fold(sum16(seg[l4:], pseudoSum(seg, et, l3, tcpLen))))
		out = append(out, seg)
	}
	return out, nil
}

// pseudoSum is the unfolded sum of the TCP pseudo-header.
func pseudoSum(seg []byte, et uint16, l3, tcpLen int) uint64 {
	if et == 0x0800 {
		return sum16(seg[l3+12:l3+20], uint64(unix.IPPROTO_TCP)+uint64(tcpLen))
	}
	return sum16(seg[l3+8:l3+40], uint64(unix.IPPROTO_TCP)+uint64(tcpLen))
}

// sum16 adds b to acc as big-endian 16-bit words (RFC 1071).
func sum16(b []byte, acc uint64) uint64 {
	for len(b) >= 2 {
		acc += uint64(b[0])<<8 | uint64(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

// fold folds a one's-complement sum to 16 bits.
func fold(acc uint64) uint16 {
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}
