package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// historyLen is how many migrations each VM's history keeps.
const historyLen = 10

func migrationsKey(id string) string { return key("migrations", id) }

// AddMigration records a finished migration of the VM with this id at the
// head of its history, keeping the last few. Recording the same migration
// twice replaces the first record.
func (s *Store) AddMigration(ctx context.Context, vmID string, r api.MigrationRecord) error {
	k := migrationsKey(vmID)
	for {
		var hist []api.MigrationRecord
		resp, err := s.c.Get(ctx, k)
		if err != nil {
			return fmt.Errorf("read migrations: %w: %w", api.ErrUnavailable, err)
		}
		var rev int64
		if len(resp.Kvs) > 0 {
			rev = resp.Kvs[0].ModRevision
			_ = json.Unmarshal(resp.Kvs[0].Value, &hist) // a corrupt history restarts empty
		}
		out := []api.MigrationRecord{r}
		for _, h := range hist {
			if h.ID != r.ID && len(out) < historyLen {
				out = append(out, h)
			}
		}
		b, err := json.Marshal(out)
		if err != nil {
			return fmt.Errorf("encode migrations: %w", err)
		}
		tx, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", rev)).
			Then(clientv3.OpPut(k, string(b))).Commit()
		if err != nil {
			return fmt.Errorf("write migrations: %w: %w", api.ErrUnavailable, err)
		}
		if tx.Succeeded {
			return nil
		}
	}
}

// Migrations returns the VM's migration history, newest first.
func (s *Store) Migrations(ctx context.Context, vmID string) ([]api.MigrationRecord, error) {
	hist, _, err := get[[]api.MigrationRecord](ctx, s.c, migrationsKey(vmID), "migrations of vm "+vmID)
	if api.IsNotFound(err) {
		return nil, nil
	}
	return hist, err
}

// PutOwnStatus records a host's report about a VM only while that host
// still owns the VM (same id, same host) at the moment of writing, so a
// report of the former owner can never overwrite the new owner's after a
// migration.
func (s *Store) PutOwnStatus(ctx context.Context, st api.VMStatus) error {
	for {
		spec, rev, err := get[api.VMSpec](ctx, s.c, vmKey(st.Name), vmWhat(st.Name))
		if err != nil {
			return err
		}
		if spec.ID != st.ID || spec.Host != st.Host {
			return api.Errorf(api.ErrConflict, "vm %q is not on host %s any more", st.Name, st.Host)
		}
		st.UpdatedAt = time.Now().UTC()
		b, err := json.Marshal(st)
		if err != nil {
			return fmt.Errorf("encode status: %w", err)
		}
		tx, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(vmKey(st.Name)), "=", rev)).
			Then(clientv3.OpPut(statusKey(st.ID), string(b))).Commit()
		if err != nil {
			return fmt.Errorf("write status: %w: %w", api.ErrUnavailable, err)
		}
		if tx.Succeeded {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

func activeKey(id string) string { return key("migrating", id) }

// ActivePrefix holds the record of each migration in flight, by VM id.
var ActivePrefix = key("migrating") + "/"

// BeginMigration starts migration m of the VM whose spec was read as sp
// (at sp.Rev), in one transaction: its record r in flight, and the spec
// naming it. api.ErrConflict if the spec changed since, or a migration is
// in flight already. It returns the spec as written.
func (s *Store) BeginMigration(ctx context.Context, sp api.VMSpec, r api.MigrationRecord, m api.Migration) (api.VMSpec, error) {
	rev := sp.Rev
	sp.Migration, sp.Rev = &m, 0
	spec, err := json.Marshal(sp)
	if err != nil {
		return sp, fmt.Errorf("encode vm: %w", err)
	}
	rb, err := json.Marshal(r)
	if err != nil {
		return sp, fmt.Errorf("encode migration: %w", err)
	}
	resp, err := s.c.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(vmKey(sp.Name)), "=", rev),
		clientv3.Compare(clientv3.CreateRevision(activeKey(sp.ID)), "=", 0),
	).Then(clientv3.OpPut(activeKey(sp.ID), string(rb)), clientv3.OpPut(vmKey(sp.Name), string(spec))).Commit()
	if err != nil {
		return sp, fmt.Errorf("start the migration of vm %q: %w: %w", sp.Name, api.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		return sp, api.Errorf(api.ErrConflict, "vm %q changed meanwhile, or migrates already; try again", sp.Name)
	}
	sp.Rev = resp.Header.Revision
	return sp, nil
}

// ActiveMigration reads the record of the VM's migration in flight.
func (s *Store) ActiveMigration(ctx context.Context, vmID string) (api.MigrationRecord, error) {
	r, _, err := get[api.MigrationRecord](ctx, s.c, activeKey(vmID), "migration of vm "+vmID)
	return r, err
}

// ActiveMigrations lists the migrations in flight, by VM id.
func (s *Store) ActiveMigrations(ctx context.Context) (map[string]api.MigrationRecord, error) {
	resp, err := s.c.Get(ctx, ActivePrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w: %w", api.ErrUnavailable, err)
	}
	out := map[string]api.MigrationRecord{}
	for _, kv := range resp.Kvs {
		var r api.MigrationRecord
		if json.Unmarshal(kv.Value, &r) == nil {
			out[strings.TrimPrefix(string(kv.Key), ActivePrefix)] = r
		}
	}
	return out, nil
}

// UpdateMigration changes the record of the VM's migration in flight with
// compare-and-swap.
func (s *Store) UpdateMigration(ctx context.Context, vmID string, fn func(*api.MigrationRecord) error) (api.MigrationRecord, error) {
	return update(ctx, s.c, activeKey(vmID), "migration of vm "+vmID, fn)
}

// FinishMigration moves a migration from in flight to the VM's history.
// Repeating it is harmless.
func (s *Store) FinishMigration(ctx context.Context, vmID string, r api.MigrationRecord) error {
	if err := s.AddMigration(ctx, vmID, r); err != nil {
		return err
	}
	cur, rev, err := get[api.MigrationRecord](ctx, s.c, activeKey(vmID), "migration of vm "+vmID)
	if api.IsNotFound(err) || (err == nil && cur.ID != r.ID) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(activeKey(vmID)), "=", rev)).
		Then(clientv3.OpDelete(activeKey(vmID))).Commit(); err != nil {
		return fmt.Errorf("end migration: %w: %w", api.ErrUnavailable, err)
	}
	return nil
}

// MigrationChanges signals each change to VM name's spec or to the record
// of VM vmID's migration in flight (coalesced: one pending signal at
// most), until ctx ends, so that a controller can look at once rather
// than at its next tick.
func (s *Store) MigrationChanges(ctx context.Context, name, vmID string) <-chan struct{} {
	ch := make(chan struct{}, 1)
	for _, k := range []string{vmKey(name), activeKey(vmID)} {
		wc := s.c.Watch(clientv3.WithRequireLeader(ctx), k)
		go func() {
			for range wc {
				select {
				case ch <- struct{}{}:
				default:
				}
			}
		}()
	}
	return ch
}
