package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/shoalvm/shoal/internal/api"
)

// ServersPrefix holds one key per running control-plane replica, on the
// lease of its session: a replica that dies drops out by itself.
var ServersPrefix = key("servers") + "/"

// LeaderElection is the election whose winner runs the controllers.
var LeaderElection = key("leader")

// Session is a replica's presence in the cluster: a lease kept alive by
// the etcd client while the process lives.
type Session struct{ s *concurrency.Session }

// NewSession opens a session whose lease expires ttl after the replica
// stops renewing it.
func (s *Store) NewSession(ctx context.Context, ttl time.Duration) (*Session, error) {
	secs := int((ttl + time.Second - 1) / time.Second)
	ss, err := concurrency.NewSession(s.c, concurrency.WithTTL(max(secs, 2)), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("open a session: %w: %w", api.ErrUnavailable, err)
	}
	return &Session{s: ss}, nil
}

// Done is closed when the session's lease is lost.
func (s *Session) Done() <-chan struct{} { return s.s.Done() }

// Close ends the session and its lease (the replica leaves at once).
func (s *Session) Close() error { return s.s.Close() }

// RegisterServer records this replica under the session's lease.
func (s *Store) RegisterServer(ctx context.Context, ss *Session, sv api.Server) error {
	sv.Leader = false
	b, err := json.Marshal(sv)
	if err != nil {
		return fmt.Errorf("encode server: %w", err)
	}
	if _, err := s.c.Put(ctx, ServersPrefix+sv.Name, string(b), clientv3.WithLease(ss.s.Lease())); err != nil {
		return fmt.Errorf("register server %s: %w: %w", sv.Name, api.ErrUnavailable, err)
	}
	return nil
}

// ListServers returns the live replicas, the leader marked.
func (s *Store) ListServers(ctx context.Context) ([]api.Server, error) {
	out, _, err := list[api.Server](ctx, s.c, ServersPrefix)
	if err != nil {
		return nil, err
	}
	leader, err := s.Leader(ctx)
	if err != nil {
		return nil, err
	}
	for i := range out {
		out[i].Leader = out[i].Name == leader
	}
	return out, nil
}

// Leader returns the name of the replica that leads ("" if none).
func (s *Store) Leader(ctx context.Context) (string, error) {
	resp, err := s.c.Get(ctx, LeaderElection+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("read the leader: %w: %w", api.ErrUnavailable, err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return strings.TrimSpace(string(resp.Kvs[0].Value)), nil
}

// Campaign blocks until this replica (name) leads, or ctx ends.
func (s *Store) Campaign(ctx context.Context, ss *Session, name string) (*concurrency.Election, error) {
	e := concurrency.NewElection(ss.s, LeaderElection)
	if err := e.Campaign(ctx, name); err != nil {
		return nil, fmt.Errorf("campaign for leader: %w", err)
	}
	return e, nil
}

// DropStaleCampaign removes the election entries of an earlier run of the
// replica called name (its process died; its lease has not expired yet),
// so that this run can lead at once instead of waiting for that lease.
func (s *Store) DropStaleCampaign(ctx context.Context, ss *Session, name string) error {
	resp, err := s.c.Get(ctx, LeaderElection+"/", clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("read the election: %w: %w", api.ErrUnavailable, err)
	}
	for _, kv := range resp.Kvs {
		if string(kv.Value) != name || clientv3.LeaseID(kv.Lease) == ss.s.Lease() {
			continue
		}
		k := string(kv.Key)
		if _, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(k)).Commit(); err != nil {
			return fmt.Errorf("drop a stale campaign: %w: %w", api.ErrUnavailable, err)
		}
	}
	return nil
}
