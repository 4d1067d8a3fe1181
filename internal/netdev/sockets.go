package netdev

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TCP states (include/net/tcp_states.h) with no connection to cut.
const (
	tcpTimeWait = 6
	tcpListen   = 10
)

// CutTCP aborts, in this network namespace, every TCP connection to
// remote, whichever process owns it (the kernel's SOCK_DESTROY). The
// owners see the connection reset at once, instead of waiting for TCP to
// give up on a peer that no longer answers (minutes). It returns how
// many connections it cut.
func CutTCP(remote netip.AddrPort) (int, error) {
	if !remote.Addr().Is4() {
		return 0, fmt.Errorf("cut TCP connections to %s: only IPv4 is supported", remote)
	}
	var socks []*netlink.Socket
	var err error
	for range 3 { // a dump interrupted by a change is retried
		if socks, err = netlink.SocketDiagTCP(unix.AF_INET); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return 0, fmt.Errorf("list TCP connections: %w", err)
	}
	n := 0
	for _, s := range socks {
		dst, ok := netip.AddrFromSlice(s.ID.Destination.To4())
		if !ok || dst != remote.Addr() || s.ID.DestinationPort != remote.Port() ||
			s.State == tcpTimeWait || s.State == tcpListen {
			continue
		}
		local := &net.TCPAddr{IP: s.ID.Source, Port: int(s.ID.SourcePort)}
		peer := &net.TCPAddr{IP: s.ID.Destination, Port: int(s.ID.DestinationPort)}
		if err := netlink.SocketDestroy(local, peer); err != nil && !errors.Is(err, unix.ENOENT) {
			return n, fmt.Errorf("cut TCP connection %s -> %s: %w", local, peer, err)
		}
		n++
	}
	return n, nil
}
