package server

import (
	"context"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/scheduler"
)

// placeStopped chooses another host than its own for stopped VM sp, as of
// revision rev or later: one that offers the VM's storage pool and could
// start it. A stopped VM holds no memory or vCPUs, so nothing is reserved;
// starting it later checks for room again.
func (c *placeCache) placeStopped(ctx context.Context, rev int64, sp api.VMSpec, pol scheduler.Policy) (string, error) {
	if err := c.lockAt(ctx, rev); err != nil {
		return "", err
	}
	defer c.mu.Unlock()
	d, err := scheduler.PlaceSorted(c.state.hostSnapshot(), scheduler.Request{Name: sp.Name, CPUs: sp.CPUs, MemoryMiB: sp.MemoryMiB,
		Pool: sp.Pool, AntiAffinity: sp.AntiAffinity, Exclude: []string{sp.Host}}, pol)
	if err != nil {
		return "", err
	}
	return d.Host, nil
}
