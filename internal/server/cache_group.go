package server

import (
	"context"
	"slices"
	"strconv"

	"github.com/shoalvm/shoal/internal/api"
)

// admitGroup checks that VM sp may join anti-affinity group ("" = leave
// its group) where it is: a VM that is not stopped must be the only one
// of the group on its host. It accounts the VM in the new group at once,
// so that concurrent starts, creates and changes are checked against it;
// undo restores the old group if the change is not written after all.
func (c *placeCache) admitGroup(ctx context.Context, rev int64, sp api.VMSpec, group string) (undo func(), err error) {
	v, err := c.lockVM(ctx, rev, sp, func(target string) error {
		return api.Errorf(api.ErrConflict, "vm %q is migrating to %s: change its anti-affinity group once the migration is over",
			sp.Name, target)
	})
	if err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	s := c.state
	if e := s.hosts[v.host]; v.running && group != "" && group != v.group && e != nil && e.groups[group] > 0 {
		other := "another VM"
		if names := s.groupMembers(v.host, group, sp.Name); len(names) > 0 {
			other = "vm " + strconv.Quote(names[0])
		}
		return nil, api.Errorf(api.ErrConflict, "vm %q cannot join anti-affinity group %q on host %s, which already runs %s of it: migrate %s to another host or stop it first",
			sp.Name, group, v.host, other, sp.Name)
	}
	old := v.group
	s.account(v, -1)
	v.group = group
	s.account(v, 1)
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if cur := c.state.vms[sp.Name]; cur == v && v.group == group {
			c.state.account(v, -1)
			v.group = old
			c.state.account(v, 1)
		}
	}, nil
}

// groupMembers lists, in name order, the VMs other than except that hold
// room for anti-affinity group on host: not stopped, and running there or
// migrating there.
func (s *cacheState) groupMembers(host, group, except string) []string {
	var out []string
	for name, v := range s.vms {
		if name != except && v.running && v.group == group && (v.host == host || v.target == host) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}
