package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// A pool the cluster defines (iSCSI, RBD) is one record, pools/NAME,
// secrets included: only servers read etcd, and hosts get a pool's
// secrets through the agent API to open its volumes.

var poolsPrefix = key("pools") + "/"

func poolKey(name string) string { return poolsPrefix + name }

// CreatePoolConfig records a new pool; api.ErrConflict if the name is
// taken, or if its storage server (Server) serves another pool already:
// a storage server serves one pool, checked in the same transaction.
func (s *Store) CreatePoolConfig(ctx context.Context, c api.PoolConfig) error {
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode pool: %w", err)
	}
	for {
		conds := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(poolKey(c.Name)), "=", 0)}
		if c.Server != "" {
			cs, rev, err := list[api.PoolConfig](ctx, s.c, poolsPrefix)
			if err != nil {
				return err
			}
			if i := slices.IndexFunc(cs, func(d api.PoolConfig) bool { return d.Server == c.Server && d.Name != c.Name }); i >= 0 {
				return api.Errorf(api.ErrConflict, "storage server %s serves pool %q already: a storage server serves one pool", c.Server, cs[i].Name)
			}
			// No pool made or changed since that list.
			conds = append(conds, clientv3.Compare(clientv3.ModRevision(poolsPrefix), "<", rev+1).WithPrefix())
		}
		resp, err := s.c.Txn(ctx).If(conds...).Then(clientv3.OpPut(poolKey(c.Name), string(b))).Commit()
		if err != nil {
			return fmt.Errorf("create pool %q: %w: %w", c.Name, api.ErrUnavailable, err)
		}
		if resp.Succeeded {
			return nil
		}
		if _, err := s.GetPoolConfig(ctx, c.Name); err == nil || c.Server == "" {
			return api.Errorf(api.ErrConflict, "pool %q already exists", c.Name)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// GetPoolConfig reads one pool the cluster defines, secrets included.
func (s *Store) GetPoolConfig(ctx context.Context, name string) (api.PoolConfig, error) {
	c, _, err := get[api.PoolConfig](ctx, s.c, poolKey(name), fmt.Sprintf("pool %q", name))
	return c, err
}

// ListPoolConfigs returns every pool the cluster defines, by name,
// secrets included.
func (s *Store) ListPoolConfigs(ctx context.Context) ([]api.PoolConfig, error) {
	cs, _, err := list[api.PoolConfig](ctx, s.c, poolsPrefix)
	return cs, err
}

// DeletePoolConfig removes a pool's definition unless a volume is in it
// (api.ErrConflict, naming one).
func (s *Store) DeletePoolConfig(ctx context.Context, name string) error {
	vols, _, err := s.ListVolumes(ctx)
	if err != nil {
		return err
	}
	n := 0
	for _, v := range vols {
		if v.Pool == name {
			n++
		}
	}
	if n > 0 {
		return api.Errorf(api.ErrConflict, "pool %q holds %d volumes: delete them first (see 'shoal volume list --pool %s')", name, n, name)
	}
	resp, err := s.c.Delete(ctx, poolKey(name))
	if err != nil {
		return fmt.Errorf("delete pool %q: %w: %w", name, api.ErrUnavailable, err)
	}
	if resp.Deleted == 0 {
		return api.Errorf(api.ErrNotFound, "pool %q not found: see 'shoal pool list'", name)
	}
	return nil
}
