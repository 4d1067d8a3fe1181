package server

import (
	"context"
	"slices"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/scheduler"
)

// liveHosts returns a copy of the hosts as placement sees them, as of
// revision rev or later, except that a host whose lease is gone is down
// even in maintenance: failover cares about life, not service.
func (c *placeCache) liveHosts(ctx context.Context, rev int64) ([]scheduler.Host, error) {
	if err := c.lockAt(ctx, rev); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	out := slices.Clone(c.state.hostSnapshot())
	for i := range out {
		if e := c.state.hosts[out[i].Name]; e != nil && !e.alive {
			out[i].State = api.HostDown
		}
	}
	return out, nil
}
