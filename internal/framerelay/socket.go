package framerelay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Classic BPF ancillary offsets (linux/filter.h); x/sys does not export them.
// The ancillary load offset SKF_AD_OFF+SKF_AD_PKTTYPE is -0x1000+4; as the
// instruction's uint32 k that is 0xfffff004.
const skfPkttype = 0xfffff004

// htons returns v in network byte order, as sockaddr_ll.sll_protocol wants.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// openPacket opens a non-blocking AF_PACKET/SOCK_RAW socket in the calling
// thread's network namespace and resolves ifname there. The socket is
// created with protocol 0, so it queues nothing until it is bound; setup runs
// on the raw fd before that. When proto is non-zero the socket is then bound
// to (proto, ifindex), so it only ever sees that interface's frames. The fd
// is wrapped in an *os.File so that it uses the runtime poller and Close
// wakes a blocked reader.
func openPacket(ifname string, proto uint16, setup func(fd int) error) (*os.File, int, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("packet socket for %s: %w (needs CAP_NET_RAW)", ifname, err)
	}
	ifindex, err := ifIndex(fd, ifname)
	if err == nil && setup != nil {
		err = setup(fd)
	}
	if err == nil && proto != 0 {
		sa := &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: ifindex}
		if err = unix.Bind(fd, sa); err != nil {
			err = fmt.Errorf("bind packet socket to %s: %w", ifname, err)
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, 0, err
	}
	return os.NewFile(uintptr(fd), "packet:"+ifname), ifindex, nil
}

// ifIndex resolves ifname in the network namespace of the socket fd.
func ifIndex(fd int, ifname string) (int, error) {
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return 0, fmt.Errorf("interface name %q: %w", ifname, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return 0, fmt.Errorf("no interface %q in this network namespace: %w", ifname, err)
		}
		return 0, fmt.Errorf("look up interface %q: %w", ifname, err)
	}
	return int(ifr.Uint32()), nil
}

// setupCapture prepares a capture socket: a kernel filter that passes only
// frames the interface transmits (PACKET_OUTGOING), virtio-net headers in
// front of each frame (so offloaded frames can be finished in user space),
// and a large receive buffer so a burst is not dropped while we copy.
func setupCapture(fd int) error {
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: skfPkttype},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: unix.PACKET_OUTGOING},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return fmt.Errorf("attach outgoing-only filter: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return fmt.Errorf("enable PACKET_VNET_HDR: %w", err)
	}
	// SO_RCVBUFFORCE ignores net.core.rmem_max but needs CAP_NET_ADMIN;
	// without it settle for what SO_RCVBUF grants.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
	}
	return nil
}

// rcvBuf is the kernel receive buffer asked for on capture sockets.
const rcvBuf = 8 << 20
