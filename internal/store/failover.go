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
	rev := sp.Rev
	sp.Host, sp.Migration, sp.Rev = to, nil, 0
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
	resp, err := s.c.Txn(ctx).If(conds...).
		Then(clientv3.OpPut(vmKey(sp.Name), string(b)), clientv3.OpPut(statusKey(sp.ID), string(st))).Commit()
	if err != nil {
		return sp, fmt.Errorf("fail over vm %q: %w: %w", sp.Name, api.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		return sp, api.Errorf(api.ErrConflict, "vm %q changed, or host %s came back, meanwhile", sp.Name, guard)
	}
	sp.Rev = resp.Header.Revision
	return sp, nil
}
