package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// AlivePrefix holds one key per live host, attached to a lease that the
// host's heartbeats renew: when they stop, etcd removes the key.
var AlivePrefix = key("alive") + "/"

// MarkAlive grants a lease of ttl and attaches the host's liveness key to
// it. Renew it with KeepAlive.
func (s *Store) MarkAlive(ctx context.Context, host string, ttl time.Duration) (clientv3.LeaseID, error) {
	secs := int64((ttl + time.Second - 1) / time.Second)
	lease, err := s.c.Grant(ctx, max(secs, 2))
	if err != nil {
		return 0, fmt.Errorf("grant liveness lease: %w: %w", api.ErrUnavailable, err)
	}
	if _, err := s.c.Put(ctx, AlivePrefix+host, time.Now().UTC().Format(time.RFC3339Nano), clientv3.WithLease(lease.ID)); err != nil {
		return 0, fmt.Errorf("mark host alive: %w: %w", api.ErrUnavailable, err)
	}
	return lease.ID, nil
}

// KeepAlive renews a liveness lease once; an expired lease is an error.
func (s *Store) KeepAlive(ctx context.Context, lease clientv3.LeaseID) error {
	if _, err := s.c.KeepAliveOnce(ctx, lease); err != nil {
		return fmt.Errorf("renew liveness lease: %w", err)
	}
	return nil
}

// HostAlive reports whether the host's liveness lease holds.
func (s *Store) HostAlive(ctx context.Context, host string) (bool, error) {
	resp, err := s.c.Get(ctx, AlivePrefix+host, clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("read liveness: %w: %w", api.ErrUnavailable, err)
	}
	return resp.Count > 0, nil
}

// AliveHosts returns the names of the hosts whose liveness lease holds.
func (s *Store) AliveHosts(ctx context.Context) (map[string]bool, error) {
	resp, err := s.c.Get(ctx, AlivePrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("read liveness: %w: %w", api.ErrUnavailable, err)
	}
	out := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), AlivePrefix)] = true
	}
	return out, nil
}

// RenewAlive renews host's liveness lease and checks that the host's
// liveness key still hangs on it: another server replica may have put the
// key on a lease of its own meanwhile, and renewing a lease that holds
// nothing would keep the host "alive" to no one. An error means: mark the
// host alive afresh (MarkAlive).
func (s *Store) RenewAlive(ctx context.Context, host string, lease clientv3.LeaseID) error {
	if err := s.KeepAlive(ctx, lease); err != nil {
		return err
	}
	resp, err := s.c.Get(ctx, AlivePrefix+host)
	if err != nil {
		return fmt.Errorf("read liveness: %w: %w", api.ErrUnavailable, err)
	}
	if len(resp.Kvs) == 0 || clientv3.LeaseID(resp.Kvs[0].Lease) != lease {
		return fmt.Errorf("host %s's liveness key is not on lease %x", host, lease)
	}
	return nil
}
