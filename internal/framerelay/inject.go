package framerelay

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Injector transmits raw Ethernet frames through an interface. On a tap the
// kernel hands each frame to the tap's reader (QEMU, hence the guest), just
// as if the bridge had forwarded it there. It is safe for concurrent use.
type Injector struct {
	ifname  string
	ifindex int
	f       *os.File
}

// OpenInjector opens a packet socket for sending on ifname, looked up in the
// calling thread's network namespace. The socket is never bound to a
// protocol, so it receives nothing and costs nothing while idle.
func OpenInjector(ifname string) (*Injector, error) {
	f, ifindex, err := openPacket(ifname, 0, nil)
	if err != nil {
		return nil, fmt.Errorf("injector on %s: %w", ifname, err)
	}
	return &Injector{ifname: ifname, ifindex: ifindex, f: f}, nil
}

// Send transmits one frame (destination MAC first, no FCS). The frame must
// fit the interface's MTU plus its Ethernet header; frames from a Capture do.
// Delivery is as reliable as the link: a tap whose reader is not draining
// its queue drops frames beyond its txqueuelen without an error.
func (in *Injector) Send(data []byte) error {
	if len(data) < ethHeaderLen {
		return fmt.Errorf("inject on %s: %d-byte frame is shorter than an Ethernet header", in.ifname, len(data))
	}
	sa := &unix.SockaddrLinklayer{
		Protocol: htons(binary.BigEndian.Uint16(data[12:])),
		Ifindex:  in.ifindex,
	}
	rc, err := in.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("inject on %s: %w", in.ifname, err)
	}
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), data, 0, sa)
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("inject %d-byte frame on %s: %w", len(data), in.ifname, err)
	}
	return nil
}

// Close releases the socket.
func (in *Injector) Close() error {
	if err := in.f.Close(); err != nil {
		return fmt.Errorf("close injector on %s: %w", in.ifname, err)
	}
	return nil
}
