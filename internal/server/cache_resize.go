package server

import (
	"context"
	"fmt"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/scheduler"
)

// admitResize checks that VM sp may have the size of want where it is,
// and accounts it with that size at once, so that concurrent starts,
// creates and changes are checked against it; undo restores the old
// size if the change is not written after all.
//
// A VM that is not stopped holds room on its host for the size set,
// which it takes at its next start (a restart, or a restart after a
// crash, which nothing checks again), and for the size it runs at (see
// api.VMSpec.HeldSize): it may grow only into room its host has. A
// stopped VM holds none: its start is checked (admitStart).
func (c *placeCache) admitResize(ctx context.Context, rev int64, sp, want api.VMSpec, pol scheduler.Policy) (undo func(), err error) {
	cpus, mem := want.HeldSize()
	v, err := c.lockVM(ctx, rev, sp, func(target string) error { return migratingSize(sp.Name, target) })
	if err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	s := c.state
	if e := s.hosts[v.host]; v.running && e != nil && e.known && (cpus > v.cpus || mem > v.mem) {
		// Only the host's room matters: the VM runs there already, even
		// on a host in maintenance.
		var h scheduler.Host
		fillHost(&h, e)
		h.State, h.Groups = api.HostUp, nil
		h.AllocatedMiB -= v.mem
		h.AllocatedCPUs -= v.cpus
		d, err := scheduler.PlaceSorted([]scheduler.Host{h}, scheduler.Request{Name: sp.Name, CPUs: cpus, MemoryMiB: mem, Host: v.host}, pol)
		if err != nil {
			why := err.Error()
			if len(d.Rejections) > 0 {
				why = d.Rejections[0].Reason
			}
			return nil, api.Errorf(api.ErrCapacity, "vm %q cannot have %s on host %s, where it runs (%s): migrate it to a host with room first, or give it less",
				sp.Name, sizeWords(want.CPUs, want.MemoryMiB), v.host, why)
		}
	}
	oldCPUs, oldMem := v.cpus, v.mem
	s.account(v, -1)
	v.cpus, v.mem = cpus, mem
	s.account(v, 1)
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if cur := c.state.vms[sp.Name]; cur == v && v.cpus == cpus && v.mem == mem {
			c.state.account(v, -1)
			v.cpus, v.mem = oldCPUs, oldMem
			c.state.account(v, 1)
		}
	}, nil
}

// lockVM returns with c.mu held, once the state reflects every change up
// to rev, the allocation of VM sp, for a change of its settings; or,
// with c.mu not held, api.ErrConflict if sp is not the VM the cache
// knows, or migrating's error if it migrates (to target).
func (c *placeCache) lockVM(ctx context.Context, rev int64, sp api.VMSpec, migrating func(target string) error) (*vmAlloc, error) {
	if err := c.lockAt(ctx, rev); err != nil {
		return nil, err
	}
	v := c.state.vms[sp.Name]
	var err error
	switch {
	case v == nil || v.id != sp.ID:
		err = api.Errorf(api.ErrConflict, "vm %q changed meanwhile, try again", sp.Name)
	case v.target != "":
		err = migrating(v.target)
	}
	if err != nil {
		c.mu.Unlock()
		return nil, err
	}
	return v, nil
}

// migratingSize refuses a size change of a VM that migrates.
func migratingSize(name, target string) error {
	return api.Errorf(api.ErrConflict, "vm %q is migrating to %s: change its size once the migration is over (or cancel it with 'shoal vm migrate %s --cancel')",
		name, target, name)
}

// sizeWords says a VM's size: "2 vCPUs, 512M".
func sizeWords(cpus int, memMiB int64) string {
	unit := "vCPUs"
	if cpus == 1 {
		unit = "vCPU"
	}
	return fmt.Sprintf("%d %s, %s", cpus, unit, api.FormatSize(memMiB<<20))
}
