package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// FailOver gives the VM whose spec was read as sp (at sp.Rev) to host to,
// in one transaction that succeeds only if the spec is unchanged since and,
// when guard is not "", host guard's liveness lease is still gone: the
// fencing condition. An agent that renews its lease first keeps the VM;
// one that renews after reads a spec that is no longer its own. The VM's
// status becomes "starting" on the new host. api.ErrConflict when either
// condition fails.
func (s *Store) FailOver(ctx context.Context, sp api.VMSpec, to, guard, why string) (api.VMSpec, error) {
	rev, m := sp.Rev, sp.Migration
	sp.Host, sp.Migration, sp.Rev = to, nil, 0
	sp.StartedCPUs, sp.StartedMemoryMiB = 0, 0 // it starts afresh there, with the size set
	b, err := json.Marshal(sp)
	if err != nil {
		return sp, fmt.Errorf("encode vm: %w", err)
	}
	st, err := json.Marshal(api.VMStatus{ID: sp.ID, Name: sp.Name, Host: to, State: api.StateStarting, Error: why,
		UpdatedAt: time.Now().UTC()})
	if err != nil {
		return sp, fmt.Errorf("encode status: %w", err)
	}
	conds := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(vmKey(sp.Name)), "=", rev)}
	if guard != "" {
		conds = append(conds, clientv3.Compare(clientv3.CreateRevision(AlivePrefix+guard), "=", 0))
	}
	ops := []clientv3.Op{clientv3.OpPut(vmKey(sp.Name), string(b)), clientv3.OpPut(statusKey(sp.ID), string(st))}
	if m != nil {
		// A migration in flight ends with the failover: its record says
		// so, lest the VM on its target be taken for a migration that
		// completed.
		rec, mrev, err := get[api.MigrationRecord](ctx, s.c, activeKey(sp.ID), "migration of vm "+sp.Name)
		if err != nil && !api.IsNotFound(err) {
			return sp, err
		}
		if err == nil && rec.ID == m.ID {
			rec.Result, rec.Superseded = api.MigrationFailed, true
			rec.Error = fmt.Sprintf("%s; vm %s was restarted on %s instead", why, sp.Name, to)
			rb, err := json.Marshal(rec)
			if err != nil {
				return sp, fmt.Errorf("encode migration: %w", err)
			}
			conds = append(conds, clientv3.Compare(clientv3.ModRevision(activeKey(sp.ID)), "=", mrev))
			ops = append(ops, clientv3.OpPut(activeKey(sp.ID), string(rb)))
		}
	}
	resp, err := s.c.Txn(ctx).If(conds...).Then(ops...).Commit()
	if err != nil {
		return sp, fmt.Errorf("fail over vm %q: %w: %w", sp.Name, api.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		return sp, api.Errorf(api.ErrConflict, "vm %q changed, or host %s came back, meanwhile", sp.Name, guard)
	}
	sp.Rev = resp.Header.Revision
	return sp, nil
}

// ClaimStart is the check a host makes before it launches the QEMU of a
// VM: in one transaction, the VM is still host's (its spec names it) and
// host's liveness lease holds. With FailOver's condition (the lease is
// gone), a VM can never be started by a host it was taken from: either
// the claim comes first, and the failover must wait for the lease to
// lapse, by which time the host's watchdog has killed the VM; or the
// failover comes first, and the claim fails. api.ErrConflict otherwise.
// A VM without a QEMU user id (api.VMSpec.UID) is given one in the same
// transaction; the host starts it once its spec shows it.
func (s *Store) ClaimStart(ctx context.Context, host, name, id string) error {
	for {
		sp, rev, err := get[api.VMSpec](ctx, s.c, vmKey(name), vmWhat(name))
		if err != nil {
			return err
		}
		if sp.ID != id || sp.Host != host {
			return api.Errorf(api.ErrConflict, "vm %q is no longer host %s's to start", name, host)
		}
		conds := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(vmKey(name)), "=", rev),
			clientv3.Compare(clientv3.CreateRevision(AlivePrefix+host), ">", 0)}
		var ops []clientv3.Op
		if sp.UID == 0 {
			// A VM made before QEMU was confined gets its user now.
			sp.UID = NewUID()
			sp.Rev = 0
			b, err := json.Marshal(sp)
			if err != nil {
				return fmt.Errorf("encode vm: %w", err)
			}
			conds = append(conds, clientv3.Compare(clientv3.CreateRevision(uidKey(sp.UID)), "=", 0))
			ops = append(ops, clientv3.OpPut(vmKey(name), string(b)), clientv3.OpPut(uidKey(sp.UID), sp.ID))
		}
		resp, err := s.c.Txn(ctx).If(conds...).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("claim the start of vm %q: %w: %w", name, api.ErrUnavailable, err)
		}
		if resp.Succeeded {
			return nil
		}
		alive, err := s.HostAlive(ctx, host)
		if err != nil {
			return err
		}
		if !alive {
			return api.Errorf(api.ErrConflict, "host %s has no lease: it may not start vm %q now", host, name)
		}
		// The spec changed meanwhile: look again.
	}
}
