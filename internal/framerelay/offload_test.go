package framerelay

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tcpFrame builds an Ethernet/IPv4-or-IPv6/TCP frame with payload. Its TCP
// checksum field holds the folded pseudo-header sum, as the stack leaves it
// for a device that offloads checksums (CHECKSUM_PARTIAL).
func tcpFrame(v6 bool, payload []byte, flags byte) []byte {
	l3, iphl, et := 14, 20, uint16(0x0800)
	if v6 {
		iphl, et = 40, 0x86dd
	}
	l4 := l3 + iphl
	f := make([]byte, l4+20+len(payload))
	copy(f, guestMAC)
	copy(f[6:], peerMAC)
	binary.BigEndian.PutUint16(f[12:], et)
	if v6 {
		f[l3] = 0x60
		binary.BigEndian.PutUint16(f[l3+4:], uint16(20+len(payload)))
		f[l3+6], f[l3+7] = unix.IPPROTO_TCP, 64
		copy(f[l3+8:], []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
		copy(f[l3+24:], []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2})
	} else {
		f[l3] = 0x45
		binary.BigEndian.PutUint16(f[l3+2:], uint16(iphl+20+len(payload)))
		binary.BigEndian.PutUint16(f[l3+4:], 0x1234)
		f[l3+6], f[l3+8], f[l3+9] = 0x40, 64, unix.IPPROTO_TCP // DF
		copy(f[l3+12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
		binary.BigEndian.PutUint16(f[l3+10:], ^fold(sum16(f[l3:l4], 0)))
	}
	binary.BigEndian.PutUint16(f[l4:], 80)
	binary.BigEndian.PutUint16(f[l4+2:], 40000)
	binary.BigEndian.PutUint32(f[l4+4:], 0xfffff000) // wraps while segmenting
	binary.BigEndian.PutUint32(f[l4+8:], 7)
	f[l4+12], f[l4+13] = 5<<4, flags
	binary.BigEndian.PutUint16(f[l4+14:], 65535)
	copy(f[l4+20:], payload)
	binary.BigEndian.PutUint16(f[l4+16:], fold(pseudoSum(f, et, l3, len(f)-l4)))
	return f
}

// checkTCP verifies the IPv4 header and TCP checksums of a plain frame.
func checkTCP(t *testing.T, f []byte) {
	t.Helper()
	l3, et := l3Start(f)
	l4 := l3 + 40
	if et == 0x0800 {
		l4 = l3 + int(f[l3]&0xf)*4
		if fold(sum16(f[l3:l4], 0)) != 0xffff {
			t.Errorf("bad IPv4 header checksum in %x", f[:l4])
		}
	}
	if fold(sum16(f[l4:], pseudoSum(f, et, l3, len(f)-l4))) != 0xffff {
		t.Errorf("bad TCP checksum in %d-byte frame", len(f))
	}
}

// TestNormalizeMatchesKernelSegmentation sends TSO super-frames and
// CHECKSUM_PARTIAL frames into the bridge, which floods them to tap0 (no
// offloads: the kernel segments and checksums them in software before the
// capture sees them) and to tap1 (offloads on, as QEMU sets them for a
// virtio-net guest: the capture gets them raw and normalize must do the
// kernel's job). Both captures must hold the same bytes.
func TestNormalizeMatchesKernelSegmentation(t *testing.T) {
	n := newTestNet(t)
	n.addTap("tap0", false)
	tap1 := n.addTap("tap1", true)
	soft := n.capture("tap0", time.Minute)
	off := n.capture("tap1", time.Minute)
	var fd int
	n.do(func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1)
		}
		return err
	})
	t.Cleanup(func() { unix.Close(fd) })
	vout := n.injector("vout") // for its ifindex
	sendOffloaded := func(f []byte, gso uint8, mss int) {
		t.Helper()
		l3, et := l3Start(f)
		l4 := l3 + 20
		if et == 0x86dd {
			l4 = l3 + 40
		}
		h := make([]byte, vnetHdrLen, vnetHdrLen+len(f))
		h[0], h[1] = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, gso
		binary.NativeEndian.PutUint16(h[2:], uint16(l4+20))
		binary.NativeEndian.PutUint16(h[4:], uint16(mss))
		binary.NativeEndian.PutUint16(h[6:], uint16(l4))
		binary.NativeEndian.PutUint16(h[8:], 16)
		sa := &unix.SockaddrLinklayer{Protocol: htons(binary.BigEndian.Uint16(f[12:])), Ifindex: vout.ifindex}
		if err := unix.Sendto(fd, append(h, f...), 0, sa); err != nil {
			t.Fatalf("send offloaded frame: %v", err)
		}
	}
	payload := make([]byte, 3500)
	for i := range payload {
		payload[i] = byte(i*31 + i>>8)
	}
	const fin, psh, ack, cwr = 0x01, 0x08, 0x10, 0x80
	sendOffloaded(tcpFrame(false, payload, cwr|ack|psh|fin), unix.VIRTIO_NET_HDR_GSO_TCPV4, 1000)
	sendOffloaded(tcpFrame(true, payload[:2500], ack|psh), unix.VIRTIO_NET_HDR_GSO_TCPV6, 1200)
	sendOffloaded(tcpFrame(false, payload[:777], ack), unix.VIRTIO_NET_HDR_GSO_NONE, 0)
	sendOffloaded(tcpFrame(true, payload[:3], ack), unix.VIRTIO_NET_HDR_GSO_NONE, 0)
	const want = 4 + 3 + 1 + 1

	toGuest := func(fs []Frame) (out []Frame) { // skips e.g. the bridge's IGMP reports
		for _, f := range fs {
			if bytes.Equal(f.Data[:6], guestMAC) {
				out = append(out, f)
			}
		}
		return out
	}
	waitFor(t, "segments in both captures", func() bool {
		return len(toGuest(soft.Since(time.Time{}))) >= want && len(toGuest(off.Since(time.Time{}))) >= want
	})
	a, b := toGuest(soft.Since(time.Time{})), toGuest(off.Since(time.Time{}))
	if len(a) != want || len(b) != want {
		t.Fatalf("kernel produced %d frames, normalize %d; want %d each", len(a), len(b), want)
	}
	for i := range a {
		checkTCP(t, a[i].Data)
		checkTCP(t, b[i].Data)
		if !bytes.Equal(a[i].Data, b[i].Data) {
			t.Errorf("frame %d differs:\nkernel    %x\nnormalize %x", i, a[i].Data[:min(80, len(a[i].Data))], b[i].Data[:min(80, len(b[i].Data))])
		}
	}
	// The offloaded tap really got the 4 frames raw; the plain one got
	// frames the kernel had already finished.
	if st := off.Stats(); st.Offloaded != 4 || st.Unsupported != 0 || st.Frames < want {
		t.Errorf("tap1 capture stats: %+v, want 4 offloaded frames", st)
	}
	if st := soft.Stats(); st.Offloaded != 0 {
		t.Errorf("tap0 capture stats: %+v, want no offloaded frames", st)
	}
	// The normalised frames replay byte-exact into a tap with offloads (as
	// on the destination host), behind an all-zero virtio-net header.
	in := n.injector("tap1")
	for _, f := range b {
		if err := in.Send(f.Data); err != nil {
			t.Fatal(err)
		}
		readTap(t, tap1, vnetHdrLen, func(got []byte) bool { return bytes.Equal(got, f.Data) })
	}
	t.Logf("kernel and normalize agree on %d frames; sizes %d..%d", want, len(a[want-1].Data), len(a[0].Data))
}

// TestNormalizeRejectsUnsupported covers offloads normalize leaves alone.
func TestNormalizeRejectsUnsupported(t *testing.T) {
	f := tcpFrame(false, make([]byte, 100), 0x10)
	if _, err := normalize(vnetHdr{gsoType: unix.VIRTIO_NET_HDR_GSO_UDP_L4, gsoSize: 10}, f); err == nil {
		t.Error("UDP segmentation offload accepted")
	}
	if _, err := normalize(vnetHdr{gsoType: unix.VIRTIO_NET_HDR_GSO_TCPV4}, f); err == nil {
		t.Error("gso_size 0 accepted")
	}
	if _, err := normalize(vnetHdr{flags: unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 200, csumOffset: 16}, f); err == nil {
		t.Error("checksum offset outside the frame accepted")
	}
	out, err := normalize(vnetHdr{gsoType: unix.VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1000}, f)
	if err != nil || len(out) != 1 {
		t.Fatalf("short super-frame: %d frames, %v", len(out), err)
	}
	checkTCP(t, out[0])
}
