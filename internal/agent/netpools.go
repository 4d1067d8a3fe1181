package agent

import (
	"context"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// A host reports, besides its directories, the pools the cluster defines
// (iSCSI, RBD) that it reaches: their portal or first monitor answers a
// TCP connection (and an RBD pool, the space its cluster reports). It looks again every netPoolsEvery, in the background,
// so that a heartbeat never waits on the network.

const netPoolsEvery = 5 * time.Second

type netPools struct {
	mu     sync.Mutex
	spaces []api.PoolSpace
}

// watchNetPools refreshes the reachable network pools until ctx ends.
func (a *Agent) watchNetPools(ctx context.Context) {
	for {
		a.refreshNetPools(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(netPoolsEvery):
		}
	}
}

func (a *Agent) refreshNetPools(ctx context.Context) {
	cfgs, err := a.cp.Pools(ctx)
	if err != nil {
		a.log.Debug("cannot read the cluster's pools", "err", err)
		return
	}
	var out []api.PoolSpace
	for _, c := range cfgs {
		addr := c.Portal
		if c.Type == api.PoolRBD && len(c.Monitors) > 0 {
			addr = c.Monitors[0]
		}
		if addr == "" || !reachable(ctx, addr) {
			continue
		}
		ps := api.PoolSpace{Name: c.Name, Type: c.Type, Shared: true}
		if c.Type == api.PoolRBD {
			// Any host of the cluster makes an RBD pool's volumes: it
			// reports the pool's space.
			d, err := a.rbdDriver(c)
			if err != nil {
				a.log.Warn("rbd pool unusable", "pool", c.Name, "err", err)
				continue
			}
			sp, err := d.Capacity(ctx)
			if err != nil {
				a.log.Warn("cannot read an rbd pool's space", "pool", c.Name, "err", err)
				continue
			}
			ps.SizeBytes, ps.UsedBytes, ps.FreeBytes = sp.SizeBytes, sp.UsedBytes, sp.FreeBytes
		}
		out = append(out, ps)
	}
	a.netPools.mu.Lock()
	a.netPools.spaces = out
	a.netPools.mu.Unlock()
}

// reachable says whether addr answers a TCP connection soon.
func reachable(ctx context.Context, addr string) bool {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// netPoolSpaces is what this host last found of the network pools.
func (a *Agent) netPoolSpaces() []api.PoolSpace {
	a.netPools.mu.Lock()
	defer a.netPools.mu.Unlock()
	return slices.Clone(a.netPools.spaces)
}
