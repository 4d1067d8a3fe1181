// Package netdev manages the host side of VM networking: Linux bridges, the
// tap devices that connect QEMU processes to them, stable interface names and
// MAC addresses, and the IPv4 pools VM addresses are handed out from.
//
// All link operations use rtnetlink (github.com/vishvananda/netlink) and the
// TUNSETIFF ioctl; nothing shells out. Each call opens its netlink socket in
// the network namespace of the calling OS thread, which for Shoal is always
// the process-wide namespace: Shoal never switches a thread's namespace, and
// in tests and the lab the whole process is started under `ip netns exec`.
// Callers may therefore use this package from any goroutine.
//
// Link operations need CAP_NET_ADMIN. They are not cancellable once a
// netlink request is sent; ctx is checked between steps.
package netdev

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// MaxIfNameLen is the longest interface name Linux accepts (IFNAMSIZ-1).
const MaxIfNameLen = 15

// ErrInvalidName reports an interface name the kernel would refuse.
var ErrInvalidName = errors.New("invalid interface name")

// TapName derives a valid, stable interface name from a VM id: "sh" followed
// by the first 10 hex digits of the SHA-256 of the id (12 characters). It is
// pure; the same id always gives the same name.
func TapName(vmID string) string {
	sum := sha256.Sum256([]byte("shoal-tap\x00" + vmID))
	return "sh" + hex.EncodeToString(sum[:5])
}

// MAC returns a stable unicast MAC address "52:54:00:xx:xx:xx" derived from
// seed. 52:54:00 is the prefix QEMU uses; its first octet has the
// locally-administered bit set and the multicast bit clear. Only 24 bits
// vary, so callers that need a guarantee should still check for duplicates
// within one broadcast domain.
func MAC(seed string) string {
	sum := sha256.Sum256([]byte("shoal-mac\x00" + seed))
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", sum[0], sum[1], sum[2])
}

// ValidateName reports whether name is acceptable to the kernel as an
// interface name: 1..15 bytes, not "." or "..", and no '/', ':' or
// whitespace.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty name", ErrInvalidName)
	case len(name) > MaxIfNameLen:
		return fmt.Errorf("%w: %q is %d bytes, the limit is %d", ErrInvalidName, name, len(name), MaxIfNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	case strings.ContainsAny(name, "/: \t\n\r\v\f"):
		return fmt.Errorf("%w: %q contains '/', ':' or whitespace", ErrInvalidName, name)
	}
	return nil
}
