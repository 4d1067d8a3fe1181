package store

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// A project is two records: projects/NAME (its name, limits and
// creation time) and projectuse/NAME, what its VMs take (api.Usage).
// The usage record changes in the same transaction as every creation
// and removal of one of its VMs, with a compare on its revision, so
// that a project's limits hold however many creates run at once, on
// however many servers. The default project has no records: it has no
// limits, and its usage is counted from the VMs when asked.

var (
	projectsPrefix = key("projects") + "/"
	usePrefix      = key("projectuse") + "/"
)

func projectKey(name string) string  { return projectsPrefix + name }
func useKey(name string) string      { return usePrefix + name }
func projectWhat(name string) string { return fmt.Sprintf("project %q", name) }

func projectNotFound(name string) error {
	return api.Errorf(api.ErrNotFound, "%s not found: see 'shoal project list'", projectWhat(name))
}

// CreateProject records a new project with no usage; api.ErrConflict
// if the name is taken.
func (s *Store) CreateProject(ctx context.Context, p api.Project) error {
	p.Usage = api.Usage{}
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode %s: %w", projectWhat(p.Name), err)
	}
	u, _ := json.Marshal(api.Usage{})
	resp, err := s.c.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(projectKey(p.Name)), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(useKey(p.Name)), "=", 0),
	).Then(clientv3.OpPut(projectKey(p.Name), string(b)), clientv3.OpPut(useKey(p.Name), string(u))).Commit()
	if err != nil {
		return fmt.Errorf("create %s: %w: %w", projectWhat(p.Name), api.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		return api.Errorf(api.ErrConflict, "%s already exists", projectWhat(p.Name))
	}
	return nil
}

// GetProject reads a project with its usage and the usage record's
// revision.
func (s *Store) GetProject(ctx context.Context, name string) (api.Project, int64, error) {
	var p api.Project
	resp, err := s.c.Txn(ctx).Then(clientv3.OpGet(projectKey(name)), clientv3.OpGet(useKey(name))).Commit()
	if err != nil {
		return p, 0, fmt.Errorf("read %s: %w: %w", projectWhat(name), api.ErrUnavailable, err)
	}
	pk, uk := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
	if len(pk) == 0 || len(uk) == 0 {
		return p, 0, projectNotFound(name)
	}
	if err := json.Unmarshal(pk[0].Value, &p); err != nil {
		return p, 0, fmt.Errorf("decode %s: %w", projectWhat(name), err)
	}
	if err := json.Unmarshal(uk[0].Value, &p.Usage); err != nil {
		return p, 0, fmt.Errorf("decode usage of %s: %w", projectWhat(name), err)
	}
	return p, uk[0].ModRevision, nil
}

// ListProjects returns every recorded project with its usage, by name.
func (s *Store) ListProjects(ctx context.Context) ([]api.Project, error) {
	ps, _, err := list[api.Project](ctx, s.c, projectsPrefix)
	if err != nil {
		return nil, err
	}
	resp, err := s.c.Get(ctx, usePrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list project usage: %w: %w", api.ErrUnavailable, err)
	}
	use := make(map[string]api.Usage, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var u api.Usage
		if json.Unmarshal(kv.Value, &u) == nil {
			use[string(kv.Key[len(usePrefix):])] = u
		}
	}
	for i := range ps {
		ps[i].Usage = use[ps[i].Name]
	}
	return ps, nil
}

// DeleteProject removes a project that has no VMs (api.ErrConflict
// while it has some: a create racing with the deletion either is
// counted first, and the deletion is refused, or finds no project).
func (s *Store) DeleteProject(ctx context.Context, name string) error {
	for {
		p, rev, err := s.GetProject(ctx, name)
		if err != nil {
			return err
		}
		if p.Usage.VMs > 0 {
			return api.Errorf(api.ErrConflict, "%s has %d VMs: delete them first (see 'shoal vm list')", projectWhat(name), p.Usage.VMs)
		}
		resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(useKey(name)), "=", rev)).
			Then(clientv3.OpDelete(projectKey(name)), clientv3.OpDelete(useKey(name))).Commit()
		if err != nil {
			return fmt.Errorf("delete %s: %w: %w", projectWhat(name), api.ErrUnavailable, err)
		}
		if resp.Succeeded {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("delete %s: %w", projectWhat(name), err)
		}
	}
}

// removeInProject is RemoveVM's transaction for a VM of a project: it
// also takes the VM off its project's usage, retrying while other
// creates and removals change that.
func (s *Store) removeInProject(ctx context.Context, v api.VMSpec, vmRev int64, ops []clientv3.Op) error {
	name := api.ProjectOf(v.Project)
	same := clientv3.Compare(clientv3.ModRevision(vmKey(v.Name)), "=", vmRev)
	for {
		p, rev, err := s.GetProject(ctx, name)
		if api.IsNotFound(err) {
			rev = 0 // gone (it could not be while it had VMs): nothing to count
		} else if err != nil {
			return err
		}
		all := ops
		if rev != 0 {
			u, _ := json.Marshal(p.Usage.Sub(api.UsageOf(v)))
			all = append(ops[:len(ops):len(ops)], clientv3.OpPut(useKey(name), string(u)))
		}
		resp, err := s.c.Txn(ctx).If(same, clientv3.Compare(clientv3.ModRevision(useKey(name)), "=", rev)).
			Then(all...).Else(clientv3.OpGet(vmKey(v.Name))).Commit()
		if err != nil {
			return fmt.Errorf("remove vm: %w: %w", api.ErrUnavailable, err)
		}
		if resp.Succeeded {
			return nil
		}
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 0 || kvs[0].ModRevision != vmRev {
			return vmChanged(v.Name)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("remove vm: %w", err)
		}
	}
}

// UpdateVMCounted is UpdateVM for a change that may change what the VM
// takes of its project's quota (its size). For a VM of a project other
// than the default one whose usage changes, the project's usage record
// is written in the same transaction as the spec, compared on its
// revision, retrying (fn again, on the spec as it is then) while other
// creates, removals and changes move it; a change that would pass one
// of the project's limits is refused with Limits.Admit's error
// (api.ErrConflict) and nothing is written.
func (s *Store) UpdateVMCounted(ctx context.Context, name string, fn func(*api.VMSpec) error) (api.VMSpec, error) {
	for {
		v, rev, err := get[api.VMSpec](ctx, s.c, vmKey(name), vmWhat(name))
		if err != nil {
			return v, err
		}
		before := api.UsageOf(v)
		if err := fn(&v); err != nil {
			return v, err
		}
		v.Rev = 0 // the record's own revision is not part of it
		b, err := json.Marshal(v)
		if err != nil {
			return v, fmt.Errorf("encode vm: %w", err)
		}
		conds := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(vmKey(name)), "=", rev)}
		ops := []clientv3.Op{clientv3.OpPut(vmKey(name), string(b))}
		after := api.UsageOf(v)
		if project := api.ProjectOf(v.Project); project != api.DefaultProject && after != before {
			c, op, err := s.recount(ctx, project, before, after)
			if err != nil {
				return v, err
			}
			conds, ops = append(conds, c), append(ops, op...)
		}
		resp, err := s.c.Txn(ctx).If(conds...).Then(ops...).Commit()
		if err != nil {
			return v, fmt.Errorf("update %s: %w: %w", vmWhat(name), api.ErrUnavailable, err)
		}
		if resp.Succeeded {
			v.Rev = resp.Header.Revision
			return v, nil
		}
		if err := ctx.Err(); err != nil {
			return v, fmt.Errorf("update %s: %w", vmWhat(name), err)
		}
	}
}

// recount is the compare and the write that take a VM of project from
// usage before to after in the project's usage record, or the project's
// refusal if that would pass one of its limits. A project that is gone
// (it cannot be while it has VMs) counts nothing: its record must still
// be absent.
func (s *Store) recount(ctx context.Context, project string, before, after api.Usage) (clientv3.Cmp, []clientv3.Op, error) {
	p, rev, err := s.GetProject(ctx, project)
	if api.IsNotFound(err) {
		return clientv3.Compare(clientv3.ModRevision(useKey(project)), "=", 0), nil, nil
	}
	if err != nil {
		return clientv3.Cmp{}, nil, err
	}
	// Only what grows is asked for: what shrinks frees room.
	grow := api.Usage{CPUs: max(after.CPUs-before.CPUs, 0), MemoryMiB: max(after.MemoryMiB-before.MemoryMiB, 0),
		DiskBytes: max(after.DiskBytes-before.DiskBytes, 0)}
	if grow != (api.Usage{}) {
		if err := p.Limits.Admit(project, p.Usage, grow); err != nil {
			return clientv3.Cmp{}, nil, err
		}
	}
	u, _ := json.Marshal(p.Usage.Sub(before).Add(after))
	return clientv3.Compare(clientv3.ModRevision(useKey(project)), "=", rev), []clientv3.Op{clientv3.OpPut(useKey(project), string(u))}, nil
}
