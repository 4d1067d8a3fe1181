package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool/rbd"
)

// probeTimeout bounds how long pool create tries a new pool.
const probeTimeout = 10 * time.Second

// probePool tries a pool before it is defined, so that a wrong key or an
// unreachable cluster is one line at 'pool create' rather than volumes
// that fail later: an RBD pool must answer for its space with the key
// given. Other types are tried by the hosts.
func probePool(ctx context.Context, c api.PoolConfig) error {
	if c.Type != api.PoolRBD {
		return nil
	}
	dir, err := os.MkdirTemp("", "shoal-probe-")
	if err != nil {
		return fmt.Errorf("probe pool %q: %w", c.Name, err)
	}
	defer os.RemoveAll(dir)
	keyring := filepath.Join(dir, "keyring")
	if err := rbd.WriteKeyring(keyring, c.User, c.Key); err != nil {
		return fmt.Errorf("probe pool %q: %w", c.Name, err)
	}
	d, err := rbd.New(rbd.Config{Monitors: c.Monitors, Pool: c.RBDPool, User: c.User, Keyring: keyring, Dir: dir})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if _, err := d.Capacity(ctx); err != nil {
		why := err.Error()
		if ctx.Err() != nil {
			why = fmt.Sprintf("no answer in %s", probeTimeout)
		}
		if i := strings.LastIndex(why, ": "); i >= 0 && ctx.Err() == nil {
			why = why[i+2:]
		}
		return api.Errorf(api.ErrInvalid, "pool %q: the Ceph cluster at %s does not serve pool %s to user %s: %s",
			c.Name, strings.Join(c.Monitors, ","), c.RBDPool, c.User, firstLine(why))
	}
	return nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
