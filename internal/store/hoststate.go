package store

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

func drainKey(host string) string { return key("drains", host) }

func hostWhat(name string) string { return fmt.Sprintf("host %q", name) }

// SetHostState sets the operator's state of a host record
// (api.HostMaintenance, or "" for in service) with compare-and-swap, so
// that it never undoes an agent's re-registration nor is undone by one.
// check may refuse the change given the current record. It returns the
// record as written.
func (s *Store) SetHostState(ctx context.Context, name, state string, check func(api.Host) error) (api.Host, error) {
	return update(ctx, s.c, hostKey(name), hostWhat(name), func(h *api.Host) error {
		if check != nil {
			if err := check(*h); err != nil {
				return err
			}
		}
		h.State = state
		return nil
	})
}

// StartDrain puts host rep.Host in maintenance and records rep as its
// drain, in one transaction. It fails with api.ErrNotFound if there is no
// such host and api.ErrConflict if a drain of it is still running; a
// finished drain's report is replaced.
func (s *Store) StartDrain(ctx context.Context, rep api.DrainReport) (api.Host, error) {
	hk, dk := hostKey(rep.Host), drainKey(rep.Host)
	b, err := json.Marshal(rep)
	if err != nil {
		return api.Host{}, fmt.Errorf("encode drain: %w", err)
	}
	for {
		resp, err := s.c.Txn(ctx).Then(clientv3.OpGet(hk), clientv3.OpGet(dk)).Commit()
		if err != nil {
			return api.Host{}, fmt.Errorf("read host %s: %w: %w", rep.Host, api.ErrUnavailable, err)
		}
		hkv, dkv := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
		if len(hkv) == 0 {
			return api.Host{}, api.Errorf(api.ErrNotFound, "%s not found", hostWhat(rep.Host))
		}
		var h api.Host
		if err := json.Unmarshal(hkv[0].Value, &h); err != nil {
			return h, fmt.Errorf("decode %s: %w", hostWhat(rep.Host), err)
		}
		var drev int64
		if len(dkv) > 0 {
			drev = dkv[0].ModRevision
			var cur api.DrainReport
			// A record that does not decode is no running drain: replace it.
			if json.Unmarshal(dkv[0].Value, &cur) == nil && cur.State == api.DrainRunning {
				return h, api.Errorf(api.ErrConflict, "host %s is already being drained (since %s): follow it with 'shoal host drain %s --follow', or stop it with 'shoal host resume %s'",
					rep.Host, cur.StartedAt.Format("15:04:05"), rep.Host, rep.Host)
			}
		}
		h.State = api.HostMaintenance
		hb, err := json.Marshal(h)
		if err != nil {
			return h, fmt.Errorf("encode %s: %w", hostWhat(rep.Host), err)
		}
		tx, err := s.c.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(hk), "=", hkv[0].ModRevision),
			clientv3.Compare(clientv3.ModRevision(dk), "=", drev),
		).Then(clientv3.OpPut(hk, string(hb)), clientv3.OpPut(dk, string(b))).Commit()
		if err != nil {
			return h, fmt.Errorf("start drain of host %s: %w: %w", rep.Host, api.ErrUnavailable, err)
		}
		if tx.Succeeded {
			return h, nil
		}
		if err := ctx.Err(); err != nil {
			return h, fmt.Errorf("start drain of host %s: %w", rep.Host, err)
		}
	}
}

// GetDrain reads the report of a host's last drain (api.ErrNotFound if it
// was never drained).
func (s *Store) GetDrain(ctx context.Context, host string) (api.DrainReport, error) {
	r, _, err := get[api.DrainReport](ctx, s.c, drainKey(host), "drain of "+hostWhat(host))
	return r, err
}

// UpdateDrain changes the report of drain id with compare-and-swap; it
// fails with api.ErrConflict once another drain of the host replaced it.
func (s *Store) UpdateDrain(ctx context.Context, host, id string, fn func(*api.DrainReport) error) (api.DrainReport, error) {
	return update(ctx, s.c, drainKey(host), "drain of "+hostWhat(host), func(r *api.DrainReport) error {
		if r.ID != id {
			return api.Errorf(api.ErrConflict, "drain %s of host %s was replaced by drain %s", id, host, r.ID)
		}
		return fn(r)
	})
}

// ListDrains returns the last drain report of every host ever drained.
func (s *Store) ListDrains(ctx context.Context) ([]api.DrainReport, error) {
	r, _, err := list[api.DrainReport](ctx, s.c, key("drains")+"/")
	return r, err
}
