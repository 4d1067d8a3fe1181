package server

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/ha"
	"github.com/shoalvm/shoal/internal/scheduler"
	"github.com/shoalvm/shoal/internal/store"
)

// failoverTick is how often the failover controller looks at the cluster.
const failoverTick = 250 * time.Millisecond

// failover drives ha.Machine: each look observes the hosts (down once
// their lease expired) and, while any host is down or a failover is under
// way, the VMs; it carries out the restarts the machine plans, each by a
// transaction that holds only while the lost host's lease is still gone
// (store.FailOver), and writes the story to the event log.
type failover struct {
	st    *store.Store
	cache *placeCache
	log   *slog.Logger
	ev    *eventLog
	pol   scheduler.Policy
	m     *ha.Machine
	busy  bool // the last look had something going on

	mu   sync.Mutex
	down map[string]time.Time // host -> when a look first saw it down
}

func newFailover(st *store.Store, cache *placeCache, log *slog.Logger, ev *eventLog, pol scheduler.Policy) *failover {
	return &failover{st: st, cache: cache, log: log, ev: ev, pol: pol, m: ha.New(ha.DefaultConfig(), pol)}
}

// run looks every failoverTick until ctx ends.
func (f *failover) run(ctx context.Context) {
	// A new term starts from scratch: what an earlier term saw (a host
	// lost, then fenced) may be stale, and a stale "fenced" would skip the
	// fence's wait.
	f.mu.Lock()
	f.m, f.down, f.busy = ha.New(ha.DefaultConfig(), f.pol), nil, false
	f.mu.Unlock()
	t := time.NewTicker(failoverTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := f.look(ctx); err != nil && ctx.Err() == nil {
			f.log.Warn("failover: look failed", "err", err)
		}
	}
}

func (f *failover) look(ctx context.Context) error {
	rev, err := f.st.Revision(ctx)
	if err != nil {
		return err
	}
	hosts, err := f.cache.liveHosts(ctx, rev)
	if err != nil {
		return err
	}
	f.noteDown(time.Now(), hosts)
	obs := ha.Observation{Hosts: hosts}
	f.mu.Lock()
	m, busy := f.m, f.busy // this term's (a new term replaces them)
	f.mu.Unlock()
	var specs map[string]api.VMSpec
	if busy || anyDown(hosts) {
		if obs.VMs, specs, err = f.observeVMs(ctx); err != nil {
			return err
		}
	}
	acts := m.Step(time.Now(), obs)
	f.mu.Lock()
	if f.m == m {
		f.busy = anyDown(hosts) || len(acts) > 0 || m.Busy()
	}
	f.mu.Unlock()
	for _, a := range acts {
		f.carry(ctx, a, specs)
	}
	return nil
}

// noteDown records when each host was first seen down; a host seen up,
// or no longer known, is forgotten.
func (f *failover) noteDown(now time.Time, hosts []ha.Host) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.down) == 0 && !anyDown(hosts) {
		return
	}
	down := make(map[string]time.Time)
	for _, h := range hosts {
		if h.State == api.HostDown {
			down[h.Name] = now
			if t, ok := f.down[h.Name]; ok {
				down[h.Name] = t
			}
		}
	}
	f.down = down
}

// downSince reports when the controller first saw host down (its lease
// gone), and false if it does not see it down.
func (f *failover) downSince(host string) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.down[host]
	return t, ok
}

func anyDown(hosts []ha.Host) bool {
	for _, h := range hosts {
		if h.State == api.HostDown {
			return true
		}
	}
	return false
}

// observeVMs reads every VM with the status its owner reported.
func (f *failover) observeVMs(ctx context.Context) ([]ha.VM, map[string]api.VMSpec, error) {
	specs, _, err := f.st.ListVMs(ctx)
	if err != nil {
		return nil, nil, err
	}
	sts, err := f.st.ListStatuses(ctx)
	if err != nil {
		return nil, nil, err
	}
	out := make([]ha.VM, 0, len(specs))
	byID := make(map[string]api.VMSpec, len(specs))
	for _, sp := range specs {
		if sp.Deleting {
			continue
		}
		byID[sp.ID] = sp
		v := ha.VM{ID: sp.ID, Name: sp.Name, Host: sp.Host, HA: sp.HA, Priority: sp.Priority,
			Running: sp.Power == api.PowerRunning, Shared: sp.SharedDisk(),
			Req: scheduler.Request{CPUs: sp.CPUs, MemoryMiB: sp.MemoryMiB, Pool: sp.Pool, AntiAffinity: sp.AntiAffinity}}
		if st, ok := sts[sp.ID]; ok && st.Host == sp.Host { // a status from an earlier owner says nothing
			v.State, v.Error = st.State, st.Error
			if st.State == api.StateFailed && st.PID > 0 {
				v.State = "" // failed with QEMU still there: not a failed start
			}
		}
		out = append(out, v)
	}
	return out, byID, nil
}

// carry does one action of the machine and records it.
func (f *failover) carry(ctx context.Context, a ha.Action, specs map[string]api.VMSpec) {
	e := api.Event{Kind: a.Kind, VM: a.VM, Host: a.Host, Severity: api.SeverityInfo,
		Figures: map[string]int64{}}
	took := a.Took.Round(10 * time.Millisecond)
	switch a.Kind {
	case ha.HostLost:
		e.Severity = api.SeverityWarning
		e.Message = fmt.Sprintf("host %s missed its heartbeats and its lease expired; its HA VMs restart elsewhere once it is surely fenced, at %s",
			a.Host, a.At.Local().Format("15:04:05.000"))
	case ha.Fenced:
		e.Severity = api.SeverityWarning
		e.Figures["fence_ms"] = a.Took.Milliseconds()
		e.Message = fmt.Sprintf("host %s is fenced: its agent has killed its HA VMs by now (%s after it was seen down)", a.Host, took)
	case ha.HostBack:
		e.Message = fmt.Sprintf("host %s renewed its lease again after %s", a.Host, took)
	case ha.Restart:
		sp, ok := specs[a.ID]
		if !ok {
			return
		}
		if _, err := f.st.FailOver(ctx, sp, a.To, a.Guard, "restarting after host "+a.Host+" failed"); err != nil {
			f.log.Warn("failover: restart not written", "vm", a.VM, "to", a.To, "err", err)
			return // the machine sees the VM unmoved and decides again
		}
		e.To = a.To
		e.Message = fmt.Sprintf("HA vm %s (priority %s) is restarting on %s: host %s failed", a.VM, priorityText(a.Priority), a.To, a.Host)
	case ha.Restarted:
		e.To = a.To
		e.Figures["restart_ms"] = a.Took.Milliseconds()
		e.Message = fmt.Sprintf("HA vm %s runs again, on %s, %s after host %s was seen down", a.VM, a.To, took, a.Host)
	case ha.Waiting:
		e.Severity = api.SeverityWarning
		e.Message = fmt.Sprintf("HA vm %s of failed host %s waits: %s; tried again every few seconds", a.VM, a.Host, a.Reason)
	case ha.Stranded:
		e.Severity = api.SeverityError
		e.Message = fmt.Sprintf("HA vm %s cannot restart elsewhere: %s", a.VM, a.Reason)
	case ha.GiveUp:
		e.Severity = api.SeverityError
		e.Message = fmt.Sprintf("failover of HA vm %s given up: %s; fix the cause and start it with 'shoal vm start %s'", a.VM, a.Reason, a.VM)
	}
	f.log.Info("failover", "kind", a.Kind, "vm", a.VM, "host", a.Host, "to", a.To, "reason", a.Reason, "took", a.Took)
	f.ev.record(ctx, e)
}

func priorityText(p string) string {
	if p == "" {
		return api.PriorityMedium
	}
	return p
}
