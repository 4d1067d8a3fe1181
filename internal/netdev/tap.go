package netdev

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TapVnetHdr is true because OpenTap always asks for IFF_VNET_HDR. QEMU sees
// the flag on the inherited fd (via TUNGETIFF) and exchanges virtio-net
// headers with the kernel, which enables checksum and segmentation offload
// for virtio-net guests; for other NIC models QEMU strips the headers
// itself. Callers may pass "vnet_hdr=on" to -netdev tap or leave it unset.
const TapVnetHdr = true

// tapFlags are the TUNSETIFF flags OpenTap uses.
const tapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// ErrTapBusy reports that a tap of that name is already held open by
// another file descriptor, usually a running QEMU.
var ErrTapBusy = errors.New("tap is in use")

// OpenTap creates a non-persistent tap device named name (IFF_TAP|IFF_NO_PI|
// IFF_VNET_HDR, see TapVnetHdr) through /dev/net/tun, attaches it to bridge,
// sets it up, and returns the open queue fd. The device lives only as long
// as some process holds that fd: hand it to QEMU via exec.Cmd.ExtraFiles,
// close the caller's copy once QEMU has started, and the tap disappears
// when QEMU exits, however it exits.
//
// A leftover persistent tap of the same name is adopted and made
// non-persistent. A tap still held by another process yields ErrTapBusy; a
// non-tap link of that name is an error. On any error nothing new is left
// behind.
func OpenTap(ctx context.Context, name, bridge string) (*os.File, error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("open tap: %w", err)
	}
	if err := ValidateName(bridge); err != nil {
		return nil, fmt.Errorf("open tap %s: bridge: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open tap %s: %w", name, err)
	}
	br, err := lookupLink(bridge)
	if err != nil {
		return nil, fmt.Errorf("open tap %s: bridge %s: %w", name, bridge, err)
	}
	if br == nil {
		return nil, fmt.Errorf("open tap %s: bridge %s does not exist (create it first with EnsureBridge)", name, bridge)
	}
	if br.Type() != "bridge" {
		return nil, fmt.Errorf("open tap %s: %s: %w (it is a %q link)", name, bridge, ErrNotBridge, br.Type())
	}

	f, err := createTap(name)
	if err != nil {
		return nil, fmt.Errorf("open tap %s: %w", name, err)
	}
	// From here on, closing f removes the device again.
	if err := attachTap(ctx, name, br); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("open tap %s: %w", name, err)
	}
	return f, nil
}

// createTap opens /dev/net/tun and binds the fd to a tap named name,
// creating the device if needed and clearing a stale persist flag.
func createTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w (is the tun module loaded? try `modprobe tun`)", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("%w: %w", ErrInvalidName, err)
	}
	ifr.SetUint16(tapFlags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		_ = unix.Close(fd)
		switch {
		case errors.Is(err, unix.EBUSY):
			return nil, fmt.Errorf("%w: another process holds it open (a VM still running?): %w", ErrTapBusy, err)
		case errors.Is(err, unix.EINVAL):
			return nil, fmt.Errorf("TUNSETIFF: a link of that name exists and is not a compatible tap; delete it: %w", err)
		case errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("TUNSETIFF: need CAP_NET_ADMIN: %w", err)
		}
		return nil, fmt.Errorf("TUNSETIFF: %w", err)
	}
	// A kept-over persistent tap of the same name is attached to rather than
	// created; make it vanish with its last fd like a fresh one.
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err == nil && ifr.Uint16()&unix.IFF_PERSIST != 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 0); err != nil {
			_ = unix.Close(fd)
			return nil, fmt.Errorf("TUNSETPERSIST 0 on leftover tap: %w", err)
		}
	}
	// The fd stays in blocking mode and out of Go's poller: it is meant to
	// be passed to QEMU, which sets its own mode.
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// attachTap enslaves the tap to br and brings it up.
func attachTap(ctx context.Context, name string, br netlink.Link) error {
	tap, err := lookupLink(name)
	if err != nil {
		return err
	}
	if tap == nil {
		return fmt.Errorf("created, but the link is not visible (is this fd in another network namespace?)")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if tap.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMasterByIndex(tap, br.Attrs().Index); err != nil {
			return fmt.Errorf("attach to bridge %s: %w", br.Attrs().Name, err)
		}
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	return nil
}
