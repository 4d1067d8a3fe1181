package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// A volume attached to a VM is named in both records: the VM's spec
// lists it (api.VolumeRef, what its host needs to open it) and the
// volume names the VM. Attaching writes both in one transaction. A
// detach first takes it out of the spec (the host then unplugs it) and
// frees the volume once the VM no longer uses it (FreeVolume), so that
// no two VMs ever have one volume open.

// AttachVolume attaches volume vol to VM name if check, given both
// records as they are, allows it; it returns the VM's new spec.
func (s *Store) AttachVolume(ctx context.Context, name, vol string, check func(api.VMSpec, api.Volume) error) (api.VMSpec, error) {
	for {
		sp, vmRev, err := get[api.VMSpec](ctx, s.c, vmKey(name), vmWhat(name))
		if err != nil {
			return sp, err
		}
		v, err := s.GetVolume(ctx, vol)
		if err != nil {
			return sp, err
		}
		if err := check(sp, v); err != nil {
			return sp, err
		}
		slot := api.FreeSlot(sp.Volumes)
		if slot == 0 {
			return sp, api.Errorf(api.ErrConflict, "vm %q has %d volumes, the most it can have", name, len(sp.Volumes))
		}
		sp.Volumes = append(slices.Clone(sp.Volumes), api.VolumeRef{Name: v.Name, ID: v.ID, Pool: v.Pool, SizeBytes: v.SizeBytes, Slot: slot})
		v.VM, v.Access = name, accessOf(sp)
		ok, rev, err := s.putBoth(ctx, sp, vmRev, v, api.Usage{})
		if err != nil {
			return sp, fmt.Errorf("attach volume %q to vm %q: %w", vol, name, err)
		}
		if ok {
			sp.Rev = rev
			return sp, nil
		}
		if err := ctx.Err(); err != nil {
			return sp, err
		}
	}
}

// DetachVolume takes volume vol out of VM name's spec (the volume stays
// the VM's until FreeVolume); api.ErrConflict if it is not attached to
// it. It returns the VM's new spec and the volume.
func (s *Store) DetachVolume(ctx context.Context, name, vol string) (api.VMSpec, api.Volume, error) {
	for {
		sp, vmRev, err := get[api.VMSpec](ctx, s.c, vmKey(name), vmWhat(name))
		if err != nil {
			return sp, api.Volume{}, err
		}
		v, err := s.GetVolume(ctx, vol)
		if err != nil {
			return sp, v, err
		}
		i := slices.IndexFunc(sp.Volumes, func(r api.VolumeRef) bool { return r.ID == v.ID })
		if i < 0 {
			if v.VM == name {
				return sp, v, nil // out of the spec already: FreeVolume's turn
			}
			return sp, v, api.Errorf(api.ErrConflict, "volume %q is not attached to vm %q", vol, name)
		}
		if sp.Migration != nil {
			return sp, v, api.Errorf(api.ErrConflict, "vm %q is migrating: detach the volume once the migration is over", name)
		}
		sp.Volumes = slices.Delete(slices.Clone(sp.Volumes), i, i+1)
		ok, rev, err := s.putBoth(ctx, sp, vmRev, v, api.Usage{})
		if err != nil {
			return sp, v, fmt.Errorf("detach volume %q from vm %q: %w", vol, name, err)
		}
		if ok {
			sp.Rev = rev
			return sp, v, nil
		}
		if err := ctx.Err(); err != nil {
			return sp, v, err
		}
	}
}

// FreeVolume makes volume vol, detached from VM name's spec, free for
// another VM; inUse, given the VM's spec as it is, says whether the VM
// may still have it open (then api.ErrConflict). A VM that is gone
// frees it.
func (s *Store) FreeVolume(ctx context.Context, name, vol string, inUse func(api.VMSpec) bool) (api.Volume, error) {
	for {
		v, err := s.GetVolume(ctx, vol)
		if err != nil {
			return v, err
		}
		if v.VM != name {
			return v, nil
		}
		sp, vmRev, err := get[api.VMSpec](ctx, s.c, vmKey(name), vmWhat(name))
		if err != nil && !api.IsNotFound(err) {
			return v, err
		}
		if err == nil && (slices.ContainsFunc(sp.Volumes, func(r api.VolumeRef) bool { return r.ID == v.ID }) || inUse(sp)) {
			return v, api.Errorf(api.ErrConflict, "vm %q still uses volume %q", name, vol)
		}
		v.VM, v.Access = "", nil
		b, _ := json.Marshal(v)
		vk := volumeKey(vol)
		resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(vk), "=", v.Rev),
			clientv3.Compare(clientv3.ModRevision(vmKey(name)), "=", vmRev)).Then(clientv3.OpPut(vk, string(b))).Commit()
		if err != nil {
			return v, fmt.Errorf("free volume %q: %w: %w", vol, api.ErrUnavailable, err)
		}
		if resp.Succeeded {
			v.Rev = resp.Header.Revision
			return v, nil
		}
		if err := ctx.Err(); err != nil {
			return v, err
		}
	}
}

// accessOf is who may open the volumes of the VM of spec sp: its host,
// if it has one. (A migration's target and a failover's new host are
// still to be added where those change the VM's host.)
func accessOf(sp api.VMSpec) []string {
	if sp.Host == "" {
		return nil
	}
	return []string{sp.Host}
}

// putBoth writes sp over revision vmRev and v over v.Rev in one
// transaction, adding delta to the project's usage (see withUsage); false
// if either record changed meanwhile.
func (s *Store) putBoth(ctx context.Context, sp api.VMSpec, vmRev int64, v api.Volume, delta api.Usage) (bool, int64, error) {
	sp.Rev = 0
	b, err := json.Marshal(sp)
	if err != nil {
		return false, 0, err
	}
	vr := v.Rev
	v.Rev = 0
	vb, err := json.Marshal(v)
	if err != nil {
		return false, 0, err
	}
	vk, volk := vmKey(sp.Name), volumeKey(v.Name)
	rev, ok, err := s.withUsage(ctx, v.Project, delta,
		[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(vk), "=", vmRev), clientv3.Compare(clientv3.ModRevision(volk), "=", vr)},
		[]clientv3.Op{clientv3.OpPut(vk, string(b)), clientv3.OpPut(volk, string(vb))})
	return ok, rev, err
}

// GrowAttached records that volume v (as read), attached to VM name,
// is size bytes, in both records, with its project's usage: the VM's
// host then grows the disk in its QEMU. It returns the VM's new spec.
func (s *Store) GrowAttached(ctx context.Context, v api.Volume, size int64) (api.VMSpec, error) {
	for {
		sp, vmRev, err := get[api.VMSpec](ctx, s.c, vmKey(v.VM), vmWhat(v.VM))
		if err != nil {
			return sp, err
		}
		i := slices.IndexFunc(sp.Volumes, func(r api.VolumeRef) bool { return r.ID == v.ID })
		if i < 0 {
			return sp, volumeChanged(v.Name)
		}
		sp.Volumes = slices.Clone(sp.Volumes)
		sp.Volumes[i].SizeBytes = size
		grown := v
		grown.SizeBytes, grown.DoneBytes = size, size
		ok, rev, err := s.putBoth(ctx, sp, vmRev, grown, api.Usage{DiskBytes: size - v.SizeBytes})
		if err != nil {
			return sp, fmt.Errorf("grow volume %q: %w", v.Name, err)
		}
		if ok {
			sp.Rev = rev
			return sp, nil
		}
		cur, err := s.GetVolume(ctx, v.Name)
		if err != nil {
			return sp, err
		}
		if cur.Rev != v.Rev {
			return sp, volumeChanged(v.Name)
		}
		if err := ctx.Err(); err != nil {
			return sp, err
		}
	}
}
