// Package ha decides failovers: which VMs of a lost host restart where,
// and when that is safe. Pure: the caller observes the cluster and passes
// the time; Step answers with actions (a plan) and the caller does the
// I/O. Equal inputs give equal actions. No clock, no I/O.
//
// The timing argument (docs/FAILOVER.md has it in full): an agent counts
// its lease as lost when it has not renewed it for FenceTimeout, measured
// from when it sent its last renewal that succeeded, and then kills its HA
// VMs. The lease of that renewal expires no earlier than TTL after it was
// sent, and the controller sees the host down no earlier than that. So
// waiting SafeAfter = max(FenceTimeout-TTL, 0) + Margin from the moment
// the controller sees the host down covers the agent's deadline, with
// Margin for the kill itself and for clocks that run at slightly
// different rates.
package ha

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/scheduler"
)

// Config holds the timings of failover.
type Config struct {
	LeaseTTL     time.Duration // a host's liveness lease
	FenceTimeout time.Duration // an agent that could not renew for this long kills its HA VMs
	Margin       time.Duration // on top: the kill, clock rates, the loops' periods
	StartTimeout time.Duration // a restart not seen running by then failed
	RetryEvery   time.Duration // a VM that found no room tries again after this
	MaxAttempts  int           // failed restarts of one VM before it is given up
}

// DefaultConfig is what the server uses: a dead host's HA VMs are
// restarted about 3 s (lease) + 2 s (margin) after its last heartbeat.
func DefaultConfig() Config {
	return Config{LeaseTTL: 3 * time.Second, FenceTimeout: 3 * time.Second, Margin: 2 * time.Second,
		StartTimeout: time.Minute, RetryEvery: 5 * time.Second, MaxAttempts: 3}
}

// SafeAfter is how long after its host is seen down a VM is surely dead.
func (c Config) SafeAfter() time.Duration { return max(c.FenceTimeout-c.LeaseTTL, 0) + c.Margin }

// Host is one host as observed: placement's view, whose State is
// api.HostDown once the host's liveness lease has expired.
type Host = scheduler.Host

// VM is one VM as observed.
type VM struct {
	ID, Name string
	Host     string // its owner
	HA       bool
	Priority string // api.PriorityHigh, ...
	Running  bool   // its desired power is on
	Shared   bool   // its disks are on a pool every host reaches
	State    string // what its owner reports (api.StateRunning, api.StateFailed, ...)
	Error    string // the owner's error, with StateFailed
	Req      scheduler.Request
}

// Observation is one look at the cluster.
type Observation struct {
	Hosts []Host
	VMs   []VM
}

// Action kinds.
const (
	HostLost  = "host.lost"          // a host's lease expired: its VMs wait for the fence
	Fenced    = "host.fenced"        // the host's HA VMs are surely dead
	HostBack  = "host.back"          // a lost host renewed its lease again
	Restart   = "vm.restart"         // give VM to To (the driver: only while From stays lost)
	Restarted = "vm.restarted"       // the VM runs on To
	Waiting   = "vm.waiting"         // no host can take the VM now; tried again later
	Stranded  = "vm.stranded"        // the VM cannot run elsewhere (its disk is on the lost host)
	GiveUp    = "vm.failover_failed" // restarts kept failing
)

// Action is one step for the driver, and the story for the event log.
type Action struct {
	Kind     string
	Host     string // the lost host (or the host of the VM)
	VM, ID   string
	To       string
	Priority string
	// Guard, on a Restart of a VM of a lost host, is that host: the
	// driver gives the VM away only while its lease is still gone.
	Guard  string
	Reason string
	Took   time.Duration // Fenced: since seen down; Restarted: since its host was seen down
	At     time.Time     // HostLost: when the fence will be done
}

// Machine holds what Step remembers between observations.
type Machine struct {
	cfg   Config
	pol   scheduler.Policy
	hosts map[string]*lost
	vms   map[string]*failover // by VM id
}

type lost struct {
	since  time.Time
	fenced bool
}

type failover struct {
	since    time.Time // its host was seen down
	from     string    // the host it died with
	to       string    // of the restart in flight ("" = none)
	at       time.Time // of the restart in flight
	attempts int
	failedOn []string
	nextTry  time.Time
	reason   string // last Waiting or Stranded reason told
	gaveUp   bool
}

// New returns a machine that has seen nothing yet.
func New(cfg Config, pol scheduler.Policy) *Machine {
	return &Machine{cfg: cfg, pol: pol, hosts: map[string]*lost{}, vms: map[string]*failover{}}
}

// Busy reports whether a host is lost or a failover under way.
func (m *Machine) Busy() bool { return len(m.hosts) > 0 || len(m.vms) > 0 }

// Step takes one observation at now and returns what to do.
func (m *Machine) Step(now time.Time, obs Observation) []Action {
	var out []Action
	out = m.stepHosts(now, obs.Hosts, out)
	seen := make(map[string]bool, len(obs.VMs))
	var cands []VM
	for _, v := range obs.VMs {
		seen[v.ID] = true
		var act *Action
		var cand bool
		act, cand = m.stepVM(now, v)
		if act != nil {
			out = append(out, *act)
		}
		if cand {
			cands = append(cands, v)
		}
	}
	for id := range m.vms {
		if !seen[id] {
			delete(m.vms, id) // deleted meanwhile
		}
	}
	return m.place(now, obs.Hosts, cands, out)
}

// stepHosts notes hosts lost, fenced and back; a lost host removed from
// the cluster is forgotten.
func (m *Machine) stepHosts(now time.Time, hosts []Host, out []Action) []Action {
	seen := make(map[string]bool, len(hosts))
	for _, h := range hosts {
		seen[h.Name] = true
	}
	for name := range m.hosts {
		if !seen[name] {
			delete(m.hosts, name)
		}
	}
	for _, h := range hosts {
		l := m.hosts[h.Name]
		switch {
		case h.State == api.HostDown && l == nil:
			m.hosts[h.Name] = &lost{since: now}
			out = append(out, Action{Kind: HostLost, Host: h.Name, At: now.Add(m.cfg.SafeAfter())})
		case h.State == api.HostDown && !l.fenced && !now.Before(l.since.Add(m.cfg.SafeAfter())):
			l.fenced = true
			out = append(out, Action{Kind: Fenced, Host: h.Name, Took: now.Sub(l.since)})
		case h.State != api.HostDown && l != nil:
			delete(m.hosts, h.Name)
			out = append(out, Action{Kind: HostBack, Host: h.Name, Took: now.Sub(l.since)})
		}
	}
	return out
}

// stepVM follows one VM; cand reports that it needs a host now.
func (m *Machine) stepVM(now time.Time, v VM) (act *Action, cand bool) {
	f := m.vms[v.ID]
	if f != nil && f.to != "" { // a restart in flight
		switch {
		case v.Host == f.to && v.State == api.StateRunning:
			delete(m.vms, v.ID)
			return &Action{Kind: Restarted, Host: f.from, VM: v.Name, ID: v.ID, To: f.to, Priority: v.Priority, Took: now.Sub(f.since)}, false
		case v.Host != f.to:
			if _, down := m.hosts[v.Host]; !down {
				delete(m.vms, v.ID) // someone else moved it: not ours any more
				return nil, false
			}
			f.to = "" // the driver could not carry it out; decide again
		case m.hosts[f.to] != nil:
			f.from, f.to = f.to, "" // its new host died too: wait for that one's fence
		case v.State != api.StateFailed && now.Sub(f.at) >= m.cfg.StartTimeout:
			// Slow, but its host lives and may yet start it: taking it
			// away without the host's word could make two copies.
			return m.tell(f, Action{Kind: Waiting, Host: v.Host, VM: v.Name, ID: v.ID, Priority: v.Priority,
				Reason: fmt.Sprintf("not running %s after it was given to %s; waiting for %s", m.cfg.StartTimeout, f.to, f.to)}), false
		case v.State == api.StateFailed: // the driver says failed only once QEMU is not running
			why := v.Error
			f.failedOn = append(f.failedOn, f.to)
			f.to = ""
			f.attempts++
			if f.attempts >= m.cfg.MaxAttempts {
				f.gaveUp = true
				return &Action{Kind: GiveUp, Host: v.Host, VM: v.Name, ID: v.ID, Priority: v.Priority,
					Reason: fmt.Sprintf("%d restarts failed, the last on %s: %s", f.attempts, v.Host, why)}, false
			}
			return nil, v.HA && v.Running
		default:
			return nil, false
		}
	}
	l, down := m.hosts[v.Host]
	if f != nil && !down && (f.attempts == 0 || v.State == api.StateRunning) {
		// Its host came back before anything moved, or it runs on a live
		// host after all (the user started it): nothing left to do.
		delete(m.vms, v.ID)
		return nil, false
	}
	if f == nil && (!down || !v.HA || !v.Running) {
		return nil, false
	}
	if f == nil {
		f = &failover{since: l.since, from: v.Host}
		m.vms[v.ID] = f
	}
	if f.gaveUp || !v.HA || !v.Running {
		return nil, false
	}
	if down && !v.Shared {
		return m.tell(f, Action{Kind: Stranded, Host: v.Host, VM: v.Name, ID: v.ID, Priority: v.Priority,
			Reason: fmt.Sprintf("its disk is on the local pool of %s: it runs again when %s is back", v.Host, v.Host)}), false
	}
	if down && !l.fenced {
		return nil, false
	}
	return nil, !now.Before(f.nextTry)
}

// tell returns a once-per-reason action.
func (m *Machine) tell(f *failover, a Action) *Action {
	if f.reason == a.Reason {
		return nil
	}
	f.reason = a.Reason
	return &a
}

// place plans restarts for cands, highest priority first.
func (m *Machine) place(now time.Time, hosts []Host, cands []VM, out []Action) []Action {
	slices.SortStableFunc(cands, func(a, b VM) int {
		if c := cmp.Compare(api.PriorityRank(b.Priority), api.PriorityRank(a.Priority)); c != 0 {
			return c
		}
		if c := m.vms[a.ID].since.Compare(m.vms[b.ID].since); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	reqs := make([]scheduler.Request, len(cands))
	for i, v := range cands {
		r := v.Req
		r.Name, r.Host = v.Name, ""
		r.Exclude = append(slices.Clone(r.Exclude), m.vms[v.ID].failedOn...)
		reqs[i] = r
	}
	for i, res := range scheduler.Plan(hosts, reqs, m.pol) {
		v, f := cands[i], m.vms[cands[i].ID]
		if res.Err != nil {
			f.nextTry = now.Add(m.cfg.RetryEvery)
			if a := m.tell(f, Action{Kind: Waiting, Host: v.Host, VM: v.Name, ID: v.ID, Priority: v.Priority,
				Reason: res.Err.Error()}); a != nil {
				out = append(out, *a)
			}
			continue
		}
		f.to, f.at, f.reason = res.Decision.Host, now, ""
		a := Action{Kind: Restart, Host: v.Host, VM: v.Name, ID: v.ID, To: f.to, Priority: v.Priority}
		if m.hosts[v.Host] != nil {
			a.Guard = v.Host
		}
		out = append(out, a)
	}
	return out
}
