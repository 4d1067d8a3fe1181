package cephtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
)

// Bridge is the cluster's switch in its namespace when its address is
// not loopback: AddHost plugs hosts into it, and a lab can plug its own
// switch into it with a veth.
const Bridge = "br0"

// ip runs the ip command.
func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// makeNetns makes the cluster's namespace with its loopback up and, for
// an address that is not loopback, the bridge that carries it.
func (c *Cluster) makeNetns(ctx context.Context) error {
	if err := ip(ctx, "netns", "add", c.Netns); err != nil {
		c.Netns = "" // not ours to delete
		return err
	}
	steps := [][]string{{"link", "set", "lo", "up"}}
	if !net.ParseIP(c.Addr).IsLoopback() {
		steps = append(steps,
			[]string{"link", "add", Bridge, "type", "bridge"},
			[]string{"addr", "add", c.Addr + "/24", "dev", Bridge},
			[]string{"link", "set", Bridge, "up"})
	}
	for _, s := range steps {
		if err := ip(ctx, append([]string{"-n", c.Netns}, s...)...); err != nil {
			return err
		}
	}
	return nil
}

// AddHost makes a namespace for a client host, plugged into the
// cluster's bridge with address addr (in the cluster's /24), and returns
// its name. Stop removes it. name is short (it names a veth).
func (c *Cluster) AddHost(ctx context.Context, name, addr string) (string, error) {
	if net.ParseIP(c.Addr).IsLoopback() {
		return "", fmt.Errorf("cephtest: the cluster listens on loopback only; start it with Options.Addr to add hosts")
	}
	ns := c.Netns + "-" + name
	port := "h-" + name
	if err := ip(ctx, "netns", "add", ns); err != nil {
		return "", err
	}
	c.mu.Lock()
	c.hosts = append(c.hosts, ns)
	c.mu.Unlock()
	steps := [][]string{
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", c.Netns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", c.Netns, "link", "set", port, "master", Bridge, "up"},
		{"-n", ns, "addr", "add", addr + "/24", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := ip(ctx, s...); err != nil {
			return "", err
		}
	}
	return ns, nil
}

// delNetns deletes a namespace; one that is gone is fine.
func delNetns(ctx context.Context, ns string) error {
	if ns == "" {
		return nil
	}
	if _, err := os.Stat("/run/netns/" + ns); os.IsNotExist(err) {
		return nil
	}
	return ip(ctx, "netns", "del", ns)
}
