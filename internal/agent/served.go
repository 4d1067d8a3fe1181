package agent

import (
	"context"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool"
)

// Served is the pools a node serves through drivers other than its
// directories: a storage server's SAN. The agent looks a volume's pool
// up there before its own directories, reports their space in its host
// record, and tells it of the volume records it works on (their access
// lists are the served pool's business).
type Served interface {
	// Driver is the driver of pool name: ok is false if this node does
	// not serve it; err says why it cannot now (its tgtd restarts, say).
	// It may wait a little, within ctx, for the pool to be ready.
	Driver(ctx context.Context, name string) (d pool.Driver, ok bool, err error)
	// Spaces is what the host record says of the served pools.
	Spaces(ctx context.Context) []api.PoolSpace
	// Volumes is given the volume records this node works on: all of
	// them when snapshot (the others are gone), else one that changed.
	Volumes(ctx context.Context, vols []api.Volume, snapshot bool)
}

// volumeDriver is the driver of pool poolName, and how a volume of it
// gets the base of an image.
func (a *Agent) volumeDriver(ctx context.Context, poolName string) (pool.Driver, func(context.Context, string) (string, error), error) {
	if a.cfg.Served != nil {
		d, ok, err := a.cfg.Served.Driver(ctx, poolName)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			return d, func(ctx context.Context, name string) (string, error) {
				base, _, err := a.imageBase(ctx, name)
				return base, err
			}, nil
		}
	}
	p, err := a.pool(poolName)
	if err != nil {
		// A pool the cluster defines that any host works on (RBD).
		if c, cerr := a.poolConfig(ctx, poolName); cerr == nil && c.Type == api.PoolRBD {
			d, err := a.rbdDriver(c)
			if err != nil {
				return nil, nil, err
			}
			return d, func(ctx context.Context, name string) (string, error) {
				base, _, err := a.imageBase(ctx, name)
				return base, err
			}, nil
		}
		return nil, nil, err
	}
	return driverOf(p), func(ctx context.Context, name string) (string, error) { return a.volumeBase(ctx, p, name) }, nil
}

// imageBase is this node's copy of image name, and the image.
func (a *Agent) imageBase(ctx context.Context, name string) (string, api.Image, error) {
	im, err := a.cp.Image(ctx, name)
	if err != nil {
		return "", im, err
	}
	base, err := a.ensureImage(ctx, name, &im)
	return base, im, err
}

// servedVolumes hands volume records to the served pools, if any.
func (a *Agent) servedVolumes(ctx context.Context, vols []api.Volume, snapshot bool) {
	if a.cfg.Served != nil {
		a.cfg.Served.Volumes(ctx, vols, snapshot)
	}
}

// servedSpaces is the space of the served pools, if any.
func (a *Agent) servedSpaces(ctx context.Context) []api.PoolSpace {
	if a.cfg.Served == nil {
		return nil
	}
	return a.cfg.Served.Spaces(ctx)
}
