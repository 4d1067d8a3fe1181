package store

import (
	"context"
	"encoding/json"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// A volume is one record, volumes/NAME. Its size counts in its project's
// disk usage: creating, growing and removing a volume changes the usage
// record in the same transaction (see withUsage), as a VM's creation does.

// VolumePrefix is watched by hosts (the volumes they work on).
var VolumePrefix = key("volumes") + "/"

func volumeKey(name string) string { return VolumePrefix + name }

func volumeNotFound(name string) error {
	return api.Errorf(api.ErrNotFound, "volume %q not found: see 'shoal volume list'", name)
}

func volumeChanged(name string) error {
	return api.Errorf(api.ErrConflict, "volume %q changed meanwhile, try again", name)
}

// GetVolume reads one volume; api.ErrNotFound if there is none.
func (s *Store) GetVolume(ctx context.Context, name string) (api.Volume, error) {
	resp, err := s.c.Get(ctx, volumeKey(name))
	if err != nil {
		return api.Volume{}, fmt.Errorf("read volume %q: %w: %w", name, api.ErrUnavailable, err)
	}
	if len(resp.Kvs) == 0 {
		return api.Volume{}, volumeNotFound(name)
	}
	return DecodeVolume(resp.Kvs[0])
}

// DecodeVolume reads a volume record as etcd gives it.
func DecodeVolume(kv *mvccpb.KeyValue) (api.Volume, error) {
	var v api.Volume
	if err := json.Unmarshal(kv.Value, &v); err != nil {
		return v, fmt.Errorf("decode volume: %w", err)
	}
	v.Rev = kv.ModRevision
	return v, nil
}

// ListVolumes returns every volume, by name, and the revision read at.
func (s *Store) ListVolumes(ctx context.Context) ([]api.Volume, int64, error) {
	return s.listVolumes(ctx)
}

// ListVolumesAt returns every volume as of revision rev.
func (s *Store) ListVolumesAt(ctx context.Context, rev int64) ([]api.Volume, error) {
	vs, _, err := s.listVolumes(ctx, clientv3.WithRev(rev))
	return vs, err
}

func (s *Store) listVolumes(ctx context.Context, opts ...clientv3.OpOption) ([]api.Volume, int64, error) {
	resp, err := s.c.Get(ctx, VolumePrefix, append(opts, clientv3.WithPrefix())...)
	if err != nil {
		return nil, 0, fmt.Errorf("list volumes: %w: %w", api.ErrUnavailable, err)
	}
	out := make([]api.Volume, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		v, err := DecodeVolume(kv)
		if err != nil {
			continue // unreadable: not listed, as other records
		}
		out = append(out, v)
	}
	return out, resp.Header.Revision, nil
}

// CreateVolume records a new volume: api.ErrConflict if the name is
// taken or its project's limits would be passed.
func (s *Store) CreateVolume(ctx context.Context, v api.Volume) (int64, error) {
	v.Rev = 0
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("encode volume: %w", err)
	}
	k := volumeKey(v.Name)
	rev, ok, err := s.withUsage(ctx, v.Project, api.UsageOfVolume(v),
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), "=", 0)}, []clientv3.Op{clientv3.OpPut(k, string(b))})
	if err != nil {
		return 0, fmt.Errorf("create volume %q: %w", v.Name, err)
	}
	if !ok {
		return 0, api.Errorf(api.ErrConflict, "volume %q already exists", v.Name)
	}
	return rev, nil
}

// UpdateVolume writes v over the record it was read as (v.Rev), taking
// the change of its size into its project's usage (a growth is checked
// against the limits); api.ErrConflict if it changed meanwhile.
func (s *Store) UpdateVolume(ctx context.Context, old, v api.Volume) (int64, error) {
	v.Rev = 0
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("encode volume: %w", err)
	}
	k := volumeKey(v.Name)
	grow := api.Usage{DiskBytes: api.UsageOfVolume(v).DiskBytes - api.UsageOfVolume(old).DiskBytes}
	rev, ok, err := s.withUsage(ctx, v.Project, grow,
		[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", old.Rev)}, []clientv3.Op{clientv3.OpPut(k, string(b))})
	if err != nil {
		return 0, fmt.Errorf("update volume %q: %w", v.Name, err)
	}
	if !ok {
		return 0, volumeChanged(v.Name)
	}
	return rev, nil
}

// RemoveVolume deletes the record of v (as read, v.Rev) and takes its
// size off its project's usage.
func (s *Store) RemoveVolume(ctx context.Context, v api.Volume) error {
	k := volumeKey(v.Name)
	_, ok, err := s.withUsage(ctx, v.Project, api.Usage{DiskBytes: -api.UsageOfVolume(v).DiskBytes},
		[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", v.Rev)}, []clientv3.Op{clientv3.OpDelete(k)})
	if err != nil {
		return fmt.Errorf("remove volume %q: %w", v.Name, err)
	}
	if !ok {
		return volumeChanged(v.Name)
	}
	return nil
}

// withUsage commits ops if conds hold, adding delta to the usage of
// project in the same transaction (nothing for the default project,
// which has no record, nor for a zero delta); a delta that adds is
// checked against the project's limits first. It retries while only the usage changed, and says
// whether conds held.
func (s *Store) withUsage(ctx context.Context, project string, delta api.Usage, conds []clientv3.Cmp, ops []clientv3.Op) (int64, bool, error) {
	name := api.ProjectOf(project)
	for {
		all, allOps := conds, ops
		uk := useKey(name)
		if name != api.DefaultProject && delta != (api.Usage{}) {
			p, rev, err := s.GetProject(ctx, name)
			if err != nil {
				return 0, false, err
			}
			add := api.Usage{DiskBytes: max(delta.DiskBytes, 0), CPUs: max(delta.CPUs, 0), MemoryMiB: max(delta.MemoryMiB, 0), VMs: max(delta.VMs, 0)}
			if err := p.Limits.Admit(name, p.Usage, add); err != nil {
				return 0, false, err
			}
			u, _ := json.Marshal(p.Usage.Add(delta).Sub(api.Usage{})) // Sub: never below zero
			all = append(conds[:len(conds):len(conds)], clientv3.Compare(clientv3.ModRevision(uk), "=", rev))
			allOps = append(ops[:len(ops):len(ops)], clientv3.OpPut(uk, string(u)))
		}
		resp, err := s.c.Txn(ctx).If(all...).Then(allOps...).Commit()
		if err != nil {
			return 0, false, fmt.Errorf("%w: %w", api.ErrUnavailable, err)
		}
		if resp.Succeeded {
			return resp.Header.Revision, true, nil
		}
		if name == api.DefaultProject || delta == (api.Usage{}) {
			return 0, false, nil
		}
		// Tell a changed usage (go again) from failed conditions.
		again, err := s.c.Txn(ctx).If(conds...).Commit()
		if err != nil {
			return 0, false, fmt.Errorf("%w: %w", api.ErrUnavailable, err)
		}
		if !again.Succeeded {
			return 0, false, nil
		}
		if err := ctx.Err(); err != nil {
			return 0, false, err
		}
	}
}
