package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool/rbd"
)

// A host works on the volumes of the cluster's RBD pools itself (any
// host reaching a Ceph cluster can make images) through one rbd.Driver
// per pool, made from the pool's config (its key kept in a keyring file
// of the agent's, 0600) and made again when the config changes.

type rbdPools struct {
	mu sync.Mutex
	m  map[string]rbdPool
}

type rbdPool struct {
	cfg api.PoolConfig
	d   *rbd.Driver
}

// rbdDriver is the driver of the RBD pool of config c.
func (a *Agent) rbdDriver(c api.PoolConfig) (*rbd.Driver, error) {
	a.rbd.mu.Lock()
	defer a.rbd.mu.Unlock()
	if p, ok := a.rbd.m[c.Name]; ok && reflect.DeepEqual(p.cfg, c) {
		return p.d, nil
	}
	dir := filepath.Join(a.cfg.Dir, "pools", c.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("rbd pool %s: %w", c.Name, err)
	}
	keyring := filepath.Join(dir, "keyring")
	if err := rbd.WriteKeyring(keyring, c.User, c.Key); err != nil {
		return nil, fmt.Errorf("rbd pool %s: %w", c.Name, err)
	}
	d, err := rbd.New(rbd.Config{Monitors: c.Monitors, Pool: c.RBDPool, User: c.User, Keyring: keyring, Dir: dir, Log: a.log.With("pool", c.Name)})
	if err != nil {
		return nil, err
	}
	if a.rbd.m == nil {
		a.rbd.m = map[string]rbdPool{}
	}
	a.rbd.m[c.Name] = rbdPool{cfg: c, d: d}
	return d, nil
}

// poolConfig is the config of the cluster's pool name.
func (a *Agent) poolConfig(ctx context.Context, name string) (api.PoolConfig, error) {
	cfgs, err := a.cp.Pools(ctx)
	if err != nil {
		return api.PoolConfig{}, err
	}
	i := slices.IndexFunc(cfgs, func(c api.PoolConfig) bool { return c.Name == name })
	if i < 0 {
		return api.PoolConfig{}, api.Errorf(api.ErrNotFound, "storage pool %q does not exist on host %s", name, a.cfg.Host)
	}
	return cfgs[i], nil
}
