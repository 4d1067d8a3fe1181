package agentapi

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/replica"
)

// RefreshServers asks the control plane for its live replicas
// (GET /v1/agent/servers) and makes them the ones this client turns to;
// the replica that answered stays among them. It reports whether the
// list changed.
func (c *Remote) RefreshServers(ctx context.Context) (bool, error) {
	var list []api.Server
	base, err := c.call(ctx, "GET", "/v1/agent/servers", nil, &list, 0)
	if err != nil {
		return false, err
	}
	return c.servers.Replace(replica.URLs(list), base), nil
}

// refreshSoon asks KeepServers for a refresh now (a replica failed).
func (c *Remote) refreshSoon() {
	select {
	case c.moved <- struct{}{}:
	default:
	}
}

// KeepServers refreshes the list of replicas at once, then every
// interval and soon after a replica fails a call, and hands the list to
// save (to keep it across restarts), the current replica first, whenever
// that changes, until ctx ends.
func (c *Remote) KeepServers(ctx context.Context, log *slog.Logger, every time.Duration, save func([]string) error) {
	t := time.NewTicker(every)
	defer t.Stop()
	saved := c.servers.Order()
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-c.moved:
			}
		}
		changed, err := c.RefreshServers(ctx)
		if err != nil {
			if ctx.Err() == nil {
				// An older server without the list, or none reachable now:
				// keep the replicas known so far.
				log.Debug("cannot refresh the list of servers", "err", err)
			}
			continue
		}
		now := c.servers.Order()
		if changed {
			log.Info("control-plane servers changed", "servers", now)
		}
		if slices.Equal(now, saved) {
			continue
		}
		if err := save(now); err != nil {
			log.Warn("cannot save the list of servers", "err", err)
			continue
		}
		saved = now
	}
}
