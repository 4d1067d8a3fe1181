package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// Store is the typed view of Shoal's etcd keyspace.
type Store struct {
	c     *clientv3.Client
	mc    *clientv3.Client // reaches each etcd member (see SetMemberClient); nil: c
	ev    sharedLease      // shared by the events appended for a while (see events.go)
	audit sharedLease      // shared by the audit records of a while (see audit.go)
	quota quotaQueues      // creates waiting for their project's transaction (see projects.go)
}

// New wraps an etcd client.
func New(c *clientv3.Client) *Store { return &Store{c: c} }

// Client returns the underlying etcd client.
func (s *Store) Client() *clientv3.Client { return s.c }

func vmKey(name string) string        { return key("vms", name) }
func statusKey(id string) string      { return key("vmstatus", id) }
func macKey(mac string) string        { return key("macs", mac) }
func ipKey(network, ip string) string { return key("ipam", network, ip) }
func hostKey(name string) string      { return key("hosts", name) }
func imageKey(name string) string     { return key("images", name) }
func networkKey(name string) string   { return key("networks", name) }
func uidKey(uid int) string           { return key("uids", strconv.Itoa(uid)) }
func vmWhat(name string) string       { return fmt.Sprintf("vm %q", name) }
func ipPrefix(network string) string  { return key("ipam", network) + "/" }

// VMPrefix and StatusPrefix are watched by hosts and by waiting API calls.
var (
	VMPrefix     = key("vms") + "/"
	StatusPrefix = key("vmstatus") + "/"
)

// CreateVM writes a new VM with its IP, MAC and (if set) QEMU user id
// reservations in one transaction and returns the revision it was
// written at. It fails with api.ErrConflict if the name exists or the
// IP, MAC or user id was taken. A VM of a project other than the default
// one is written with its project's usage, in the same transaction that
// checks the project's limits (see projects.go): api.ErrConflict if it
// would pass one, api.ErrNotFound if the project does not exist.
func (s *Store) CreateVM(ctx context.Context, v api.VMSpec) (int64, error) {
	v.Rev = 0
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("encode vm: %w", err)
	}
	if api.ProjectOf(v.Project) != api.DefaultProject {
		return s.createInProject(v, b)
	}
	conds, ops := createOps(v, b)
	resp, err := s.c.Txn(ctx).If(conds...).Then(ops...).Else(clientv3.OpGet(vmKey(v.Name))).Commit()
	if err != nil {
		return 0, fmt.Errorf("create vm: %w: %w", api.ErrUnavailable, err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	return 0, createFailed(v, len(resp.Responses[0].GetResponseRange().Kvs) > 0)
}

// createOps are the conditions and writes of a VM's creation.
func createOps(v api.VMSpec, b []byte) ([]clientv3.Cmp, []clientv3.Op) {
	vk, ik, mk := vmKey(v.Name), ipKey(v.Network, v.IP), macKey(v.MAC)
	conds := []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(vk), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(ik), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(mk), "=", 0),
	}
	ops := []clientv3.Op{clientv3.OpPut(vk, string(b)), clientv3.OpPut(ik, v.ID), clientv3.OpPut(mk, v.ID)}
	if v.UID != 0 {
		conds = append(conds, clientv3.Compare(clientv3.CreateRevision(uidKey(v.UID)), "=", 0))
		ops = append(ops, clientv3.OpPut(uidKey(v.UID), v.ID))
	}
	return conds, ops
}

// createFailed says why a VM's creation failed: its name exists, or
// its address, MAC or user id was taken.
func createFailed(v api.VMSpec, exists bool) error {
	if exists {
		return api.Errorf(api.ErrConflict, "vm %q already exists", v.Name)
	}
	return fmt.Errorf("%w%w", api.Errorf(api.ErrConflict, "address %s, MAC %s or QEMU user %d was just taken, try again", v.IP, v.MAC, v.UID), errAddressTaken)
}

// NewUID picks a QEMU user id for a new VM at random from the range
// api.VMUIDMin + [0, api.VMUIDCount). CreateVM and ClaimStart reserve it;
// on the rare clash the caller picks again.
func NewUID() int { return api.VMUIDMin + rand.IntN(api.VMUIDCount) }

// errAddressTaken marks a create that lost a race for its address; its
// text is empty so that it adds nothing to the message.
var errAddressTaken = errors.New("")

// IsAddressTaken reports whether CreateVM failed only because another VM
// took the address or MAC meanwhile, so that a retry with a new one may succeed.
func IsAddressTaken(err error) bool { return errors.Is(err, errAddressTaken) }

// GetVM reads a VM's spec.
func (s *Store) GetVM(ctx context.Context, name string) (api.VMSpec, error) {
	v, _, err := get[api.VMSpec](ctx, s.c, vmKey(name), vmWhat(name))
	return v, err
}

// ListVMs returns every VM spec and the revision they were read at.
func (s *Store) ListVMs(ctx context.Context) ([]api.VMSpec, int64, error) {
	return list[api.VMSpec](ctx, s.c, VMPrefix)
}

// ListVMsStrict is ListVMs for hosts: a record that does not decode is an
// error, never a VM that silently is not there (which a host would take
// as "delete it here").
func (s *Store) ListVMsStrict(ctx context.Context) ([]api.VMSpec, int64, error) {
	resp, err := s.c.Get(ctx, VMPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list vms: %w: %w", api.ErrUnavailable, err)
	}
	out := make([]api.VMSpec, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var v api.VMSpec
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			return nil, 0, fmt.Errorf("vm record %s is corrupt: %w", kv.Key, err)
		}
		v.Rev = kv.ModRevision
		out = append(out, v)
	}
	return out, resp.Header.Revision, nil
}

// UpdateVM changes a VM's spec with compare-and-swap.
// The returned spec's Rev is the revision it was written at.
func (s *Store) UpdateVM(ctx context.Context, name string, fn func(*api.VMSpec) error) (api.VMSpec, error) {
	return update(ctx, s.c, vmKey(name), vmWhat(name), func(v *api.VMSpec) error {
		err := fn(v)
		v.Rev = 0 // the record's own revision is not part of it
		return err
	})
}

// RemoveVM deletes the records of a VM (spec, status, IP allocation) if the
// stored spec still has the given id. It is the last step of a delete.
func (s *Store) RemoveVM(ctx context.Context, v api.VMSpec) error {
	cur, rev, err := get[api.VMSpec](ctx, s.c, vmKey(v.Name), vmWhat(v.Name))
	if err != nil {
		return err
	}
	if cur.ID != v.ID {
		return api.Errorf(api.ErrConflict, "vm %q was replaced meanwhile", v.Name)
	}
	ops := []clientv3.Op{clientv3.OpDelete(vmKey(v.Name)), clientv3.OpDelete(statusKey(cur.ID)), clientv3.OpDelete(migrationsKey(cur.ID)), clientv3.OpDelete(activeKey(cur.ID))}
	if cur.IP != "" {
		ops = append(ops, clientv3.OpDelete(ipKey(cur.Network, cur.IP)))
	}
	if cur.MAC != "" {
		ops = append(ops, clientv3.OpDelete(macKey(cur.MAC)))
	}
	if cur.UID != 0 {
		ops = append(ops, clientv3.OpDelete(uidKey(cur.UID)))
	}
	if api.ProjectOf(cur.Project) != api.DefaultProject {
		return s.removeInProject(ctx, cur, rev, ops)
	}
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(vmKey(v.Name)), "=", rev)).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("remove vm: %w: %w", api.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		return vmChanged(v.Name)
	}
	return nil
}

func vmChanged(name string) error {
	return api.Errorf(api.ErrConflict, "vm %q changed meanwhile, try again", name)
}

// PutStatus records what a host reports about a VM (keyed by the VM's id,
// so that a status can never be taken for that of a later VM of the same
// name).
func (s *Store) PutStatus(ctx context.Context, st api.VMStatus) error {
	st.UpdatedAt = time.Now().UTC()
	return put(ctx, s.c, statusKey(st.ID), st)
}

// GetStatus reads the reported status of the VM with this id
// (api.ErrNotFound if none yet).
func (s *Store) GetStatus(ctx context.Context, id string) (api.VMStatus, error) {
	v, _, err := get[api.VMStatus](ctx, s.c, statusKey(id), "status of vm "+id)
	return v, err
}

// ListStatuses returns every reported VM status keyed by VM id.
func (s *Store) ListStatuses(ctx context.Context) (map[string]api.VMStatus, error) {
	resp, err := s.c.Get(ctx, StatusPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list statuses: %w: %w", api.ErrUnavailable, err)
	}
	out := make(map[string]api.VMStatus, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var st api.VMStatus
		if err := json.Unmarshal(kv.Value, &st); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		out[string(kv.Key[len(StatusPrefix):])] = st
	}
	return out, nil
}

// UsedIPs returns the addresses allocated on a network.
func (s *Store) UsedIPs(ctx context.Context, network string) ([]string, error) {
	p := ipPrefix(network)
	resp, err := s.c.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w: %w", api.ErrUnavailable, err)
	}
	out := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, string(kv.Key[len(p):]))
	}
	return out, nil
}

// PutHost registers or refreshes a host record.
func (s *Store) PutHost(ctx context.Context, h api.Host) error {
	return put(ctx, s.c, hostKey(h.Name), h)
}

// ClaimHost creates or refreshes a host record for the machine whose
// identity is h.ID: fn decides, given the current record (nil if none),
// whether the claim may proceed and what to write.
func (s *Store) ClaimHost(ctx context.Context, h api.Host, fn func(cur *api.Host) (api.Host, error)) error {
	if _, err := s.GetHost(ctx, h.Name); api.IsNotFound(err) {
		nh, err := fn(nil)
		if err != nil {
			return err
		}
		if err := create(ctx, s.c, hostKey(h.Name), fmt.Sprintf("host %q", h.Name), nh); err == nil || !errors.Is(err, api.ErrConflict) {
			return err
		}
	}
	_, err := update(ctx, s.c, hostKey(h.Name), fmt.Sprintf("host %q", h.Name), func(cur *api.Host) error {
		nh, err := fn(cur)
		if err != nil {
			return err
		}
		*cur = nh
		return nil
	})
	return err
}

// GetHost reads a host record.
func (s *Store) GetHost(ctx context.Context, name string) (api.Host, error) {
	h, _, err := get[api.Host](ctx, s.c, hostKey(name), fmt.Sprintf("host %q", name))
	return h, err
}

// ListHosts returns every host record.
func (s *Store) ListHosts(ctx context.Context) ([]api.Host, error) {
	h, _, err := list[api.Host](ctx, s.c, key("hosts")+"/")
	return h, err
}

// CreateImage records a new image; api.ErrConflict if the name is taken.
func (s *Store) CreateImage(ctx context.Context, im api.Image) error {
	return create(ctx, s.c, imageKey(im.Name), fmt.Sprintf("image %q", im.Name), im)
}

// PutImage records or replaces an image.
func (s *Store) PutImage(ctx context.Context, im api.Image) error {
	return put(ctx, s.c, imageKey(im.Name), im)
}

// GetImage reads an image record.
func (s *Store) GetImage(ctx context.Context, name string) (api.Image, error) {
	im, _, err := get[api.Image](ctx, s.c, imageKey(name), fmt.Sprintf("image %q", name))
	return im, err
}

// ListImages returns every image record.
func (s *Store) ListImages(ctx context.Context) ([]api.Image, error) {
	im, _, err := list[api.Image](ctx, s.c, key("images")+"/")
	return im, err
}

// DeleteImage removes an image record.
func (s *Store) DeleteImage(ctx context.Context, name string) error {
	if _, err := s.c.Delete(ctx, imageKey(name)); err != nil {
		return fmt.Errorf("delete image: %w: %w", api.ErrUnavailable, err)
	}
	return nil
}

// PutNetwork records or replaces a network.
func (s *Store) PutNetwork(ctx context.Context, n api.Network) error {
	return put(ctx, s.c, networkKey(n.Name), n)
}

// GetNetwork reads a network record.
func (s *Store) GetNetwork(ctx context.Context, name string) (api.Network, error) {
	n, _, err := get[api.Network](ctx, s.c, networkKey(name), fmt.Sprintf("network %q", name))
	return n, err
}

// ListNetworks returns every network.
func (s *Store) ListNetworks(ctx context.Context) ([]api.Network, error) {
	n, _, err := list[api.Network](ctx, s.c, key("networks")+"/")
	return n, err
}
