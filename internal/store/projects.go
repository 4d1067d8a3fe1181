package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

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

// Creates in a project are committed in batches: the first create of a
// project that finds no batch under way starts one, and every create
// that arrives while a batch's transaction runs waits for the next. One
// transaction writes a whole batch (its VMs and the project's new usage,
// compared on the usage record's revision), so concurrent creates in one
// project share a transaction instead of failing each other's compare.
// The server keeps the usage record as it last wrote it, so that a
// batch costs one transaction and no read while no one else changes it.

// maxBatch keeps a batch's transaction under etcd's default limit of
// 128 operations (4 compares and 4 writes per VM, and the usage's).
const maxBatch = 24

// batchTimeout bounds one batch's transaction.
const batchTimeout = 30 * time.Second

type quotaQueues struct {
	mu sync.Mutex
	q  map[string]*projectQueue
}

// projectQueue is one project's waiting creates and what the server
// knows of its usage record. Only the batch under way (running) touches
// the record fields.
type projectQueue struct {
	pending []*pendingCreate
	running bool

	known  bool // limits, use and rev are the record as last written or read
	limits api.Limits
	use    api.Usage
	rev    int64 // the usage record's revision
}

type pendingCreate struct {
	v    api.VMSpec
	b    []byte // v, encoded
	rev  int64
	err  error
	done chan struct{}
}

// createInProject queues v's creation for its project's next batch and
// waits for it (whatever the caller's context: the batch has its own
// timeout, and a created VM must not go unreported).
func (s *Store) createInProject(v api.VMSpec, b []byte) (int64, error) {
	name := api.ProjectOf(v.Project)
	pc := &pendingCreate{v: v, b: b, done: make(chan struct{})}
	s.quota.mu.Lock()
	if s.quota.q == nil {
		s.quota.q = map[string]*projectQueue{}
	}
	q := s.quota.q[name]
	if q == nil {
		q = &projectQueue{}
		s.quota.q[name] = q
	}
	q.pending = append(q.pending, pc)
	start := !q.running
	q.running = true
	s.quota.mu.Unlock()
	if start {
		go s.runBatches(name, q)
	}
	<-pc.done
	return pc.rev, pc.err
}

// runBatches commits q's waiting creates, a batch at a time, until none wait.
func (s *Store) runBatches(name string, q *projectQueue) {
	for {
		s.quota.mu.Lock()
		n := min(len(q.pending), maxBatch)
		batch := q.pending[:n:n]
		q.pending = q.pending[n:]
		if n == 0 {
			q.running = false
			q.pending = nil
		}
		s.quota.mu.Unlock()
		if n == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
		s.commitBatch(ctx, name, q, batch)
		cancel()
		for _, pc := range batch {
			close(pc.done)
		}
	}
}

// commitBatch writes the creates of batch that fit the project's limits,
// in one transaction, and sets each one's revision or error. A create is
// refused only against a usage just read from etcd.
func (s *Store) commitBatch(ctx context.Context, name string, q *projectQueue, batch []*pendingCreate) {
	fresh := false
	for try := 0; ; try++ {
		if err := ctx.Err(); err != nil || try == 100 {
			failAll(batch, fmt.Errorf("create vm in %s: %w: %d tries: %w", projectWhat(name), api.ErrUnavailable, try, err))
			return
		}
		if !q.known {
			p, rev, err := s.GetProject(ctx, name)
			if err != nil {
				failAll(batch, err)
				return
			}
			q.known, q.limits, q.use, q.rev, fresh = true, p.Limits, p.Usage, rev, true
		}
		use, in := admit(name, q.limits, q.use, batch)
		if len(in) < len(batch) && !fresh {
			q.known = false // refuse only on what etcd says now
			continue
		}
		if len(in) == 0 {
			return
		}
		u, _ := json.Marshal(use)
		conds := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(useKey(name)), "=", q.rev)}
		ops := []clientv3.Op{clientv3.OpPut(useKey(name), string(u))}
		for _, pc := range in {
			c, o := createOps(pc.v, pc.b)
			conds, ops = append(conds, c...), append(ops, o...)
		}
		resp, err := s.c.Txn(ctx).If(conds...).Then(ops...).Else(clientv3.OpGet(useKey(name), clientv3.WithKeysOnly())).Commit()
		if err != nil {
			q.known = false
			failAll(in, fmt.Errorf("create vm: %w: %w", api.ErrUnavailable, err))
			return
		}
		if resp.Succeeded {
			q.use, q.rev = use, resp.Header.Revision
			for _, pc := range in {
				pc.rev = resp.Header.Revision
			}
			return
		}
		q.known, fresh = false, false
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 0 || kvs[0].ModRevision != q.rev {
			continue // the usage changed (or the project went): again, from etcd
		}
		// A VM's name, address, MAC or user id was taken: one at a time
		// tells which.
		if len(in) == 1 {
			exists, _, err := s.VMExists(ctx, in[0].v.Name)
			if err == nil {
				err = createFailed(in[0].v, exists)
			}
			in[0].err = err
			return
		}
		for _, pc := range in {
			s.commitBatch(ctx, name, q, []*pendingCreate{pc})
		}
		return
	}
}

// admit returns the usage of a project of limits l that uses use once
// the creates of batch that fit are added, in order, and those creates;
// the others get their refusal.
func admit(name string, l api.Limits, use api.Usage, batch []*pendingCreate) (api.Usage, []*pendingCreate) {
	in := make([]*pendingCreate, 0, len(batch))
	for _, pc := range batch {
		add := api.UsageOf(pc.v)
		pc.err = l.Admit(name, use, add)
		if pc.err == nil {
			use = use.Add(add)
			in = append(in, pc)
		}
	}
	return use, in
}

func failAll(batch []*pendingCreate, err error) {
	for _, pc := range batch {
		pc.err = err
	}
}
