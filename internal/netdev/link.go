package netdev

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrNotBridge reports that a link exists under the wanted name but is not a
// Linux bridge.
var ErrNotBridge = errors.New("link is not a bridge")

// EnsureBridge creates (if missing) a Linux bridge named name, sets it up,
// and assigns addr (CIDR with the host's address, e.g. "10.57.0.1/24") if it
// is not already present. An empty addr leaves the bridge without an
// address (a pure layer-2 switch). It is idempotent and safe to call
// concurrently with itself.
//
// It fails if a link of another type already uses name, or if the bridge
// already carries the same IP with a different prefix length.
func EnsureBridge(ctx context.Context, name, addr string) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("ensure bridge: %w", err)
	}
	var prefix netip.Prefix
	if addr != "" {
		p, err := netip.ParsePrefix(addr)
		if err != nil {
			return fmt.Errorf("ensure bridge %s: address %q is not a CIDR like 10.57.0.1/24: %w", name, addr, err)
		}
		prefix = p
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ensure bridge %s: %w", name, err)
	}

	link, err := lookupLink(name)
	if err != nil {
		return fmt.Errorf("ensure bridge %s: %w", name, err)
	}
	if link == nil {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("ensure bridge %s: create: %w (is the bridge module available and do we have CAP_NET_ADMIN?)", name, err)
		}
		// Re-read: on EEXIST someone else won the race, and either way we
		// want the kernel's view (index, type).
		if link, err = lookupLink(name); err != nil {
			return fmt.Errorf("ensure bridge %s: %w", name, err)
		}
		if link == nil {
			return fmt.Errorf("ensure bridge %s: created but not found afterwards", name)
		}
	}
	if link.Type() != "bridge" {
		return fmt.Errorf("ensure bridge %s: %w (it is a %q link; delete it or pick another name)", name, ErrNotBridge, link.Type())
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ensure bridge %s: %w", name, err)
	}
	if err := pinMAC(link); err != nil {
		return fmt.Errorf("ensure bridge %s: %w", name, err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("ensure bridge %s: set up: %w", name, err)
		}
	}
	if !prefix.IsValid() {
		return nil
	}
	if err := ensureAddr(link, prefix); err != nil {
		return fmt.Errorf("ensure bridge %s: %w", name, err)
	}
	return nil
}

// ensureAddr adds prefix to link unless the same address and prefix length
// are already there.
func ensureAddr(link netlink.Link, prefix netip.Prefix) error {
	family := netlink.FAMILY_V4
	if prefix.Addr().Is6() && !prefix.Addr().Is4In6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := addrList(link, family)
	if err != nil {
		return err
	}
	want := prefix.Addr().Unmap()
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		got, ok := netip.AddrFromSlice(a.IPNet.IP)
		if !ok || got.Unmap() != want {
			continue
		}
		ones, _ := a.IPNet.Mask.Size()
		if ones == prefix.Bits() {
			return nil
		}
		return fmt.Errorf("address %s is already assigned with prefix /%d, want /%d; remove it with `ip addr del %s/%d dev %s`",
			want, ones, prefix.Bits(), want, ones, link.Attrs().Name)
	}
	bits := 32
	if want.Is6() {
		bits = 128
	}
	nlAddr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   net.IP(want.AsSlice()),
		Mask: net.CIDRMask(prefix.Bits(), bits),
	}}
	if err := netlink.AddrAdd(link, nlAddr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add address %s: %w", prefix, err)
	}
	return nil
}

// addrList lists addresses, retrying a few times when the kernel reports
// that the dump was interrupted by a concurrent change.
func addrList(link netlink.Link, family int) ([]netlink.Addr, error) {
	var err error
	for range 5 {
		var addrs []netlink.Addr
		addrs, err = netlink.AddrList(link, family)
		if err == nil {
			return addrs, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
}

// DeleteLink removes the link called name if it exists. A missing link is
// not an error.
func DeleteLink(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("delete link: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	link, err := lookupLink(name)
	if err != nil {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	if link == nil {
		return nil
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// LinkExists reports whether an interface with this name exists in the
// process's network namespace.
func LinkExists(name string) (bool, error) {
	if err := ValidateName(name); err != nil {
		return false, fmt.Errorf("link exists: %w", err)
	}
	link, err := lookupLink(name)
	if err != nil {
		return false, fmt.Errorf("link exists %s: %w", name, err)
	}
	return link != nil, nil
}

// lookupLink returns the link called name, or nil (and no error) if there
// is none.
func lookupLink(name string) (netlink.Link, error) {
	link, err := netlink.LinkByName(name)
	if err == nil {
		return link, nil
	}
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
		return nil, nil
	}
	return nil, fmt.Errorf("look up link: %w", err)
}

// AttachLink puts an existing link (e.g. a host's uplink NIC) into a
// bridge and sets it up, so the bridge's VMs share its layer-2 network.
// Idempotent.
func AttachLink(ctx context.Context, name, bridge string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("attach %s to %s: %w", name, bridge, err)
	}
	link, err := lookupLink(name)
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", name, bridge, err)
	}
	if link == nil {
		return fmt.Errorf("attach %s to %s: there is no link %s", name, bridge, name)
	}
	br, err := lookupLink(bridge)
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", name, bridge, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return fmt.Errorf("attach %s to %s: %w", name, bridge, ErrNotBridge)
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("attach %s to %s: %w", name, bridge, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// addrAssignSet is the kernel's NET_ADDR_SET: the address was set by
// user space, and the bridge keeps it.
const addrAssignSet = "3"

// pinMAC fixes a bridge's MAC address. Left alone, a Linux bridge takes
// the lowest MAC of its ports, so a VM's tap joining or leaving can change
// the MAC of the host's own address on the bridge, and its neighbours then
// send to a MAC nobody answers until their ARP entries expire (seconds to
// minutes). Setting the address, even to its current value, makes it stick.
func pinMAC(link netlink.Link) error {
	b, err := os.ReadFile(filepath.Join("/sys/class/net", link.Attrs().Name, "addr_assign_type"))
	if err == nil && strings.TrimSpace(string(b)) == addrAssignSet {
		return nil
	}
	if err := netlink.LinkSetHardwareAddr(link, link.Attrs().HardwareAddr); err != nil {
		return fmt.Errorf("pin MAC address: %w", err)
	}
	return nil
}
