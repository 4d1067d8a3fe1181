package netdev

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrPoolExhausted is wrapped by Pool.Next when every address is in use.
var ErrPoolExhausted = errors.New("exhausted")

// ErrBadPool is wrapped by ParsePool for any subnet it refuses.
var ErrBadPool = errors.New("invalid pool")

// Pool describes an IPv4 subnet from which VM addresses are handed out.
// Gateway is the host's address on the bridge; VMs get addresses from
// First to Last inclusive.
type Pool struct {
	Subnet      netip.Prefix
	Gateway     netip.Addr
	First, Last netip.Addr
}

// Smallest and largest subnets ParsePool accepts.
const (
	minPoolBits = 8  // a /8 is already 16M addresses; shorter is a typo
	maxPoolBits = 30 // network, gateway, one VM, broadcast
)

// ParsePool parses an IPv4 network in CIDR form such as "10.57.0.0/24".
// The gateway is the first host address (.1). For a /24 or larger subnet,
// VMs get network+10 .. broadcast-5 (".10 - .250" for a /24), leaving room
// for hand-assigned addresses at both ends; for a /25 to /30 they get every
// host address after the gateway. The address must be the network address
// (no host bits), and the prefix must be between /8 and /30.
func ParsePool(cidr string) (Pool, error) {
	pfx, err := netip.ParsePrefix(cidr)
	if err != nil {
		return Pool{}, fmt.Errorf("%w %q: not a CIDR like 10.57.0.0/24: %w", ErrBadPool, cidr, err)
	}
	if !pfx.Addr().Is4() {
		return Pool{}, fmt.Errorf("%w %q: only IPv4 subnets are supported", ErrBadPool, cidr)
	}
	if m := pfx.Masked(); m != pfx {
		return Pool{}, fmt.Errorf("%w %q: host bits are set; use the network address %s", ErrBadPool, cidr, m)
	}
	bits := pfx.Bits()
	if bits > maxPoolBits {
		return Pool{}, fmt.Errorf("%w %q: too small; a pool needs at least a /%d (gateway plus one VM address)", ErrBadPool, cidr, maxPoolBits)
	}
	if bits < minPoolBits {
		return Pool{}, fmt.Errorf("%w %q: too large; use a prefix of /%d or longer", ErrBadPool, cidr, minPoolBits)
	}
	network := addrToU32(pfx.Addr())
	size := uint32(1) << (32 - bits)
	broadcast := network + size - 1
	first, last := network+2, broadcast-1
	if size >= 256 {
		first, last = network+10, broadcast-5
	}
	return Pool{
		Subnet:  pfx,
		Gateway: u32ToAddr(network + 1),
		First:   u32ToAddr(first),
		Last:    u32ToAddr(last),
	}, nil
}

// Next returns the lowest address in First..Last that is not in used (and
// is not the gateway). When none is left the error reads
// "pool 10.57.0.0/24 exhausted" and wraps ErrPoolExhausted. Keys of used
// must be plain IPv4 addresses (netip.Addr.Unmap them if in doubt).
func (p Pool) Next(used map[netip.Addr]bool) (netip.Addr, error) {
	if !p.First.Is4() || !p.Last.Is4() || p.Last.Less(p.First) {
		return netip.Addr{}, fmt.Errorf("%w: pool %s has no address range; build it with ParsePool", ErrBadPool, p.Subnet)
	}
	for a := p.First; ; a = a.Next() {
		if !used[a] && a != p.Gateway {
			return a, nil
		}
		if a == p.Last {
			break
		}
	}
	return netip.Addr{}, fmt.Errorf("pool %s %w", p.Subnet, ErrPoolExhausted)
}

// Contains reports whether a lies in the range VMs are handed addresses
// from (First..Last inclusive). For plain subnet membership use
// p.Subnet.Contains. IPv4-mapped IPv6 addresses are treated as IPv4.
func (p Pool) Contains(a netip.Addr) bool {
	if !a.IsValid() || !p.First.IsValid() || !p.Last.IsValid() {
		return false
	}
	a = a.Unmap()
	if !a.Is4() {
		return false
	}
	return !a.Less(p.First) && !p.Last.Less(a)
}

// GatewayPrefix is the gateway with the subnet's prefix length, e.g.
// 10.57.0.1/24: the address to give the bridge (see EnsureBridge).
func (p Pool) GatewayPrefix() netip.Prefix {
	return netip.PrefixFrom(p.Gateway, p.Subnet.Bits())
}

// String describes the pool, e.g.
// "10.57.0.0/24 (gateway 10.57.0.1, range 10.57.0.10-10.57.0.250)".
func (p Pool) String() string {
	return fmt.Sprintf("%s (gateway %s, range %s-%s)", p.Subnet, p.Gateway, p.First, p.Last)
}

func addrToU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32ToAddr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
