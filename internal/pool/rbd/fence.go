package rbd

import (
	"context"
	"net"

	"github.com/shoalvm/shoal/internal/api"
)

// Fence puts host's address on the OSD blocklist: every Ceph client of
// that host (its QEMUs, whatever images they have open) fails its next
// I/O with EBLOCKLISTED (-108), and its watches and exclusive locks are
// dropped, so that a client on another host takes an image at once. The
// blocklist is per client address, not per image: ids are not needed.
func (d *Driver) Fence(ctx context.Context, host string, ids []string) error {
	addr, err := d.hostAddr(host)
	if err != nil {
		return err
	}
	_, err = d.fence(ctx, "osd", "blocklist", "add", addr, blocklistSeconds)
	return err
}

// Unfence takes host's address off the blocklist. A client that was
// fenced stays unusable (it must reconnect); new ones of the host work.
func (d *Driver) Unfence(ctx context.Context, host string, ids []string) error {
	addr, err := d.hostAddr(host)
	if err != nil {
		return err
	}
	_, err = d.fence(ctx, "osd", "blocklist", "rm", addr)
	return err
}

// fence runs the ceph command as the fencing user.
func (d *Driver) fence(ctx context.Context, args ...string) ([]byte, error) {
	return d.run(ctx, "ceph", append([]string{"-c", d.fenceConf, "--id", d.cfg.FenceUser}, args...)...)
}

// hostAddr is the blocklist entry of all clients of a host: its IP with
// port 0 and nonce 0, which the OSDs match against any client from it.
func (d *Driver) hostAddr(host string) (string, error) {
	ip, ok := d.cfg.Hosts[host]
	if !ok {
		return "", api.Errorf(api.ErrInvalid, "rbd pool: no address known for host %s: cannot fence it", host)
	}
	return net.JoinHostPort(ip, "0") + "/0", nil
}
