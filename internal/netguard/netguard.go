// Package netguard admits network connections from expected peers only:
// the ends a migration target opens for its source take no stranger's
// connection, encrypted or not.
package netguard

import (
	"log/slog"
	"net"
	"net/netip"
)

// OnlyFrom returns a listener whose Accept hands over only the
// connections that come from the address from; any other is closed at
// once and logged. An invalid from admits no one.
func OnlyFrom(l net.Listener, from netip.Addr, log *slog.Logger) net.Listener {
	return &onlyFrom{Listener: l, from: from.Unmap(), log: log}
}

type onlyFrom struct {
	net.Listener
	from netip.Addr
	log  *slog.Logger
}

func (o *onlyFrom) Accept() (net.Conn, error) {
	for {
		c, err := o.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if From(c.RemoteAddr(), o.from) {
			return c, nil
		}
		o.log.Warn("refused a connection from an unexpected address", "from", c.RemoteAddr(), "expected", o.from, "on", o.Listener.Addr())
		c.Close()
	}
}

// From reports whether a is an address of the IP from.
func From(a net.Addr, from netip.Addr) bool {
	ap, err := netip.ParseAddrPort(a.String())
	return err == nil && from.IsValid() && ap.Addr().Unmap() == from.Unmap()
}
