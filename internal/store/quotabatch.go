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
	v     api.VMSpec
	conds []clientv3.Cmp // its creation's conditions and writes (createOps)
	ops   []clientv3.Op
	rev   int64
	err   error
	done  chan struct{}
}

// createInProject queues v's creation for its project's next batch and
// waits for it (whatever the caller's context: the batch has its own
// timeout, and a created VM must not go unreported).
func (s *Store) createInProject(v api.VMSpec, b []byte) (int64, error) {
	name := api.ProjectOf(v.Project)
	pc := &pendingCreate{v: v, done: make(chan struct{})}
	pc.conds, pc.ops = createOps(v, b)
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
		var batch []*pendingCreate
		batch, q.pending = takeBatch(q.pending)
		if len(batch) == 0 {
			q.running = false
			q.pending = nil
		}
		s.quota.mu.Unlock()
		if len(batch) == 0 {
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

// takeBatch splits the next batch off pending: up to maxBatch creates,
// in order, leaving for a later batch any that writes a key an earlier
// one of the batch writes (two creates of one name, address, MAC or user
// id: etcd refuses a transaction that writes a key twice, and the later
// create must fail on its own compare).
func takeBatch(pending []*pendingCreate) (batch, rest []*pendingCreate) {
	keys := map[string]bool{}
	for i, pc := range pending {
		if len(batch) == maxBatch {
			return batch, append(rest, pending[i:]...)
		}
		clash := false
		for _, op := range pc.ops {
			clash = clash || keys[string(op.KeyBytes())]
		}
		if clash {
			rest = append(rest, pc)
			continue
		}
		for _, op := range pc.ops {
			keys[string(op.KeyBytes())] = true
		}
		batch = append(batch, pc)
	}
	return batch, rest
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
			conds, ops = append(conds, pc.conds...), append(ops, pc.ops...)
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
