package server

import (
	"context"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/scheduler"
)

// reserveRecovery chooses where VM sp, whose host sp.Host is dead, can run
// again (to: the user's choice, "" = the scheduler's) and moves what the
// VM takes there at once, so that concurrent creates and starts cannot
// overbook that host; undo moves it back if the recovery is not written
// after all. (Once written, the VM's record says the same.)
func (c *placeCache) reserveRecovery(ctx context.Context, rev int64, sp api.VMSpec, to string, pol scheduler.Policy) (string, func(), error) {
	if err := c.lockAt(ctx, rev); err != nil {
		return "", nil, err
	}
	defer c.mu.Unlock()
	s := c.state
	v := s.vms[sp.Name]
	if v == nil || v.id != sp.ID || v.host != sp.Host {
		return "", nil, api.Errorf(api.ErrConflict, "vm %q changed meanwhile, try again", sp.Name)
	}
	d, err := scheduler.PlaceSorted(s.hostSnapshot(), scheduler.Request{Name: sp.Name, CPUs: sp.CPUs, MemoryMiB: sp.MemoryMiB,
		Pool: sp.Pool, Host: to, AntiAffinity: sp.AntiAffinity, Exclude: []string{sp.Host}}, pol)
	if err != nil {
		return "", nil, err
	}
	move := func(from, to string) {
		s := c.state
		if cur := s.vms[sp.Name]; cur == v && v.host == from {
			s.account(v, -1)
			v.host = to
			s.account(v, 1)
		}
	}
	move(sp.Host, d.Host)
	return d.Host, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		move(d.Host, sp.Host)
	}, nil
}
