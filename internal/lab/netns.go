package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The lab's network is made with the ip command, always with -n NS: no
// link, address or route is ever made in the root namespace. A veth pair is
// created inside ctl with its peer placed straight into the other
// namespace.

// netnsDir is where 'ip netns' keeps its named namespaces.
const netnsDir = "/run/netns"

// switchBridge is the "physical switch" in ctl.
const switchBridge = "sw0"

// switchPort is the ctl end of member's cable.
func switchPort(member string) string { return "sw-" + member }

// nsExists tells whether a named network namespace exists.
func nsExists(name string) bool {
	_, err := os.Lstat(filepath.Join(netnsDir, name))
	return err == nil
}

// nsID returns the device and inode of a named namespace.
func nsID(name string) (dev, ino uint64, err error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(netnsDir, name), &st); err != nil {
		return 0, 0, err
	}
	return st.Dev, st.Ino, nil
}

// ours tells whether the namespace recorded as ns is still the one the lab
// made (not one of the same name made by someone else since).
func ours(ns Namespace) bool {
	dev, ino, err := nsID(ns.Name)
	if err != nil {
		return false
	}
	return ns.Ino == 0 || (dev == ns.Dev && ino == ns.Ino)
}

// run runs a command and returns an error with its output.
func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ipn runs 'ip -n ns ARGS'.
func ipn(ctx context.Context, ns string, args ...string) error {
	return run(ctx, "ip", append([]string{"-n", ns}, args...)...)
}

// addNS records, makes and identifies one namespace, and brings its
// loopback up.
func addNS(ctx context.Context, s *State, name string) error {
	s.Namespaces = append(s.Namespaces, Namespace{Name: name})
	if err := s.save(); err != nil {
		return err
	}
	if err := run(ctx, "ip", "netns", "add", name); err != nil {
		// Not made by us (it may be someone else's): forget it.
		s.Namespaces = s.Namespaces[:len(s.Namespaces)-1]
		return errors.Join(err, s.save())
	}
	dev, ino, err := nsID(name)
	if err != nil {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	s.Namespaces[len(s.Namespaces)-1].Dev, s.Namespaces[len(s.Namespaces)-1].Ino = dev, ino
	if err := s.save(); err != nil {
		return err
	}
	return ipn(ctx, name, "link", "set", "lo", "up")
}

// makeSwitch makes the bridge sw0 in ctl with the server's address.
func makeSwitch(ctx context.Context) error {
	steps := [][]string{
		{"link", "add", switchBridge, "type", "bridge"},
		{"addr", "add", cidr(CtlNS), "dev", switchBridge},
		{"link", "set", switchBridge, "up"},
	}
	for _, a := range steps {
		if err := ipn(ctx, CtlNS, a...); err != nil {
			return err
		}
	}
	return nil
}

// cable plugs member into the switch: a veth pair, sw-MEMBER on sw0 in
// ctl and eth0 in member, both up. addr, if not empty, goes on eth0 (the
// hosts get none: their agent moves eth0 into its VM bridge).
func cable(ctx context.Context, member, addr string) error {
	port := switchPort(member)
	if err := ipn(ctx, CtlNS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", member); err != nil {
		return err
	}
	if err := ipn(ctx, CtlNS, "link", "set", port, "master", switchBridge, "up"); err != nil {
		return err
	}
	if addr != "" {
		if err := ipn(ctx, member, "addr", "add", addr, "dev", "eth0"); err != nil {
			return err
		}
	}
	return ipn(ctx, member, "link", "set", "eth0", "up")
}

// setCable plugs (up) or unplugs (down) member's cable at the switch.
func setCable(ctx context.Context, member string, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return ipn(ctx, CtlNS, "link", "set", switchPort(member), state)
}

// cableUp tells whether member's switch port is administratively up; ok is
// false if it cannot be read.
func cableUp(ctx context.Context, member string) (up, ok bool) {
	out, err := exec.CommandContext(ctx, "ip", "-n", CtlNS, "-o", "link", "show", switchPort(member)).Output()
	if err != nil {
		return false, false
	}
	return linkFlagsUp(string(out)), true
}

// linkFlagsUp tells whether a line of 'ip -o link show' has the UP flag.
func linkFlagsUp(line string) bool {
	_, rest, ok := strings.Cut(line, "<")
	if !ok {
		return false
	}
	flags, _, _ := strings.Cut(rest, ">")
	for _, f := range strings.Split(flags, ",") {
		if f == "UP" {
			return true
		}
	}
	return false
}

// delNS deletes a namespace the lab made; one that is gone is fine, and
// one of the same name that someone else made since is left alone.
func delNS(ctx context.Context, log *slog.Logger, ns Namespace) error {
	if !nsExists(ns.Name) {
		return nil
	}
	if !ours(ns) {
		log.Warn("lab: a namespace of this name is not the one the lab made; left alone", "ns", ns.Name)
		return nil
	}
	return run(ctx, "ip", "netns", "del", ns.Name)
}
