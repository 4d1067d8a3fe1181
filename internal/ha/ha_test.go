package ha

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/scheduler"
)

// world is a small cluster that a script changes between looks.
type world struct {
	hosts []Host
	vms   []VM
}

func newWorld(hostMiB ...int64) *world {
	w := &world{}
	for i, mem := range hostMiB {
		w.hosts = append(w.hosts, Host{Name: fmt.Sprintf("host%d", i+1), State: api.HostUp, CPUs: 8, MemoryMiB: mem,
			Pools: []string{"shared", "local"}, Networks: []string{"default"}})
	}
	return w
}

// vm adds a running VM of mem MiB on host; opts: "ha", "high", "low",
// "local", "stopped", "group=G".
func (w *world) vm(name, host string, mem int64, opts ...string) {
	v := VM{ID: "id-" + name, Name: name, Host: host, Running: true, Shared: true, State: api.StateRunning,
		Req: scheduler.Request{CPUs: 1, MemoryMiB: mem, Network: "default", Pool: "shared"}}
	for _, o := range opts {
		switch {
		case o == "ha":
			v.HA = true
		case o == "high" || o == "low":
			v.Priority = o
		case o == "local":
			v.Shared, v.Req.Pool = false, "local"
		case o == "stopped":
			v.Running, v.State = false, api.StateStopped
		case strings.HasPrefix(o, "group="):
			v.Req.AntiAffinity = strings.TrimPrefix(o, "group=")
		}
	}
	w.vms = append(w.vms, v)
	w.alloc()
}

// alloc recomputes the hosts' allocations from the VMs, as the driver's
// cache does.
func (w *world) alloc() {
	for i := range w.hosts {
		h := &w.hosts[i]
		h.AllocatedMiB, h.AllocatedCPUs, h.Groups = 0, 0, map[string]int{}
		for _, v := range w.vms {
			if v.Host == h.Name && v.Running {
				h.AllocatedMiB += v.Req.MemoryMiB
				h.AllocatedCPUs += v.Req.CPUs
				if v.Req.AntiAffinity != "" {
					h.Groups[v.Req.AntiAffinity]++
				}
			}
		}
	}
}

func (w *world) host(name string) *Host {
	for i := range w.hosts {
		if w.hosts[i].Name == name {
			return &w.hosts[i]
		}
	}
	panic(name)
}

func (w *world) find(name string) *VM {
	for i := range w.vms {
		if w.vms[i].Name == name {
			return &w.vms[i]
		}
	}
	panic(name)
}

// apply does what the driver does with a Restart: the VM's spec moves to
// the new host, which has not started it yet.
func (w *world) apply(acts []Action) {
	for _, a := range acts {
		if a.Kind == Restart {
			v := w.find(a.VM)
			v.Host, v.State, v.Error = a.To, api.StateStarting, ""
		}
	}
	w.alloc()
}

// step is one look of a script.
type step struct {
	at     time.Duration // since the script began
	change func(w *world)
	want   []string // the actions, as "kind subject [to]"
}

func short(a Action) string {
	who := a.Host
	if a.VM != "" {
		who = a.VM
	}
	s := a.Kind + " " + who
	if a.Kind == Restart && a.Guard != a.Host && a.Guard != "" {
		s += " guard=" + a.Guard
	}
	if a.To != "" {
		s += " " + a.To
	}
	return s
}

func down(h string) func(*world) { return func(w *world) { w.host(h).State = api.HostDown } }
func up(h string) func(*world)   { return func(w *world) { w.host(h).State = api.HostUp } }
func runs(vm string) func(*world) {
	return func(w *world) { w.find(vm).State = api.StateRunning }
}
func fails(vm, why string) func(*world) {
	return func(w *world) { v := w.find(vm); v.State, v.Error = api.StateFailed, why }
}
func both(fs ...func(*world)) func(*world) {
	return func(w *world) {
		for _, f := range fs {
			f(w)
		}
	}
}

func run(t *testing.T, w *world, steps []step) []Action {
	t.Helper()
	m := New(DefaultConfig(), scheduler.Policy{})
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var all []Action
	for i, s := range steps {
		if s.change != nil {
			s.change(w)
			w.alloc()
		}
		acts := m.Step(t0.Add(s.at), Observation{Hosts: slices.Clone(w.hosts), VMs: slices.Clone(w.vms)})
		var got []string
		for _, a := range acts {
			got = append(got, short(a))
		}
		if !slices.Equal(got, s.want) {
			t.Fatalf("step %d (at %s): got %q, want %q", i+1, s.at, got, s.want)
		}
		w.apply(acts)
		all = append(all, acts...)
	}
	return all
}

func TestHostDownRestartsHAVMsAfterTheFence(t *testing.T) {
	w := newWorld(4096, 4096, 4096)
	w.vm("low1", "host1", 256, "ha", "low")
	w.vm("high1", "host1", 256, "ha", "high")
	w.vm("plain", "host1", 256)                // not HA: stays, shown unknown by the API
	w.vm("off", "host1", 256, "ha", "stopped") // HA but stopped: nothing to restart
	w.vm("other", "host2", 256, "ha")
	acts := run(t, w, []step{
		{at: 0},
		{at: time.Second, change: down("host1"), want: []string{"host.lost host1"}},
		{at: 2 * time.Second},
		{at: 2900 * time.Millisecond},
		{at: 3 * time.Second, want: []string{"host.fenced host1", "vm.restart high1 host3", "vm.restart low1 host2"}},
		{at: 4 * time.Second, change: runs("high1"), want: []string{"vm.restarted high1 host3"}},
		{at: 5 * time.Second, change: runs("low1"), want: []string{"vm.restarted low1 host2"}},
		{at: 6 * time.Second},
	})
	for _, a := range acts {
		switch a.Kind {
		case HostLost:
			if want := 3 * time.Second; !a.At.Equal(time.Date(2026, 1, 1, 0, 0, 3, 0, time.UTC)) {
				t.Errorf("fence due at %s, want %s after the host was seen down", a.At, want-time.Second)
			}
		case Fenced:
			if a.Took != 2*time.Second {
				t.Errorf("fence took %s, want 2s", a.Took)
			}
		case Restarted:
			if a.VM == "high1" && a.Took != 3*time.Second {
				t.Errorf("high1 ran again %s after its host was seen down, want 3s", a.Took)
			}
		}
	}
}

func TestHostBackBeforeTheFenceMovesNothing(t *testing.T) {
	w := newWorld(4096, 4096)
	w.vm("a", "host1", 256, "ha")
	run(t, w, []step{
		{at: 0, change: down("host1"), want: []string{"host.lost host1"}},
		{at: time.Second, change: up("host1"), want: []string{"host.back host1"}},
		{at: 5 * time.Second},
		{at: 10 * time.Second},
	})
}

func TestHostBackDuringTheRestartChangesNothing(t *testing.T) {
	w := newWorld(4096, 4096)
	w.vm("a", "host1", 256, "ha")
	run(t, w, []step{
		{at: 0, change: down("host1"), want: []string{"host.lost host1"}},
		{at: 2 * time.Second, want: []string{"host.fenced host1", "vm.restart a host2"}},
		{at: 3 * time.Second, change: up("host1"), want: []string{"host.back host1"}},
		{at: 4 * time.Second, change: runs("a"), want: []string{"vm.restarted a host2"}},
	})
}

func TestTwoHostsDownAtOnce(t *testing.T) {
	w := newWorld(4096, 4096, 4096)
	w.vm("a", "host1", 256, "ha")
	w.vm("b", "host2", 256, "ha", "high")
	w.vm("c", "host2", 256, "ha", "low")
	run(t, w, []step{
		{at: 0, change: both(down("host1"), down("host2")), want: []string{"host.lost host1", "host.lost host2"}},
		{at: 2 * time.Second, want: []string{"host.fenced host1", "host.fenced host2",
			"vm.restart b host3", "vm.restart a host3", "vm.restart c host3"}},
	})
}

func TestNewHostDiesDuringTheRestart(t *testing.T) {
	w := newWorld(4096, 4096, 1024)
	w.vm("a", "host1", 256, "ha")
	run(t, w, []step{
		{at: 0, change: down("host1"), want: []string{"host.lost host1"}},
		{at: 2 * time.Second, want: []string{"host.fenced host1", "vm.restart a host2"}},
		{at: 3 * time.Second, change: down("host2"), want: []string{"host.lost host2"}},
		{at: 4 * time.Second},
		{at: 5 * time.Second, want: []string{"host.fenced host2", "vm.restart a host3"}},
		{at: 6 * time.Second, change: runs("a"), want: []string{"vm.restarted a host3"}},
	})
}

func TestNoCapacityWaitsWithAReasonAndRetries(t *testing.T) {
	w := newWorld(4096, 300)
	w.vm("big", "host1", 512, "ha")
	acts := run(t, w, []step{
		{at: 0, change: down("host1"), want: []string{"host.lost host1"}},
		{at: 2 * time.Second, want: []string{"host.fenced host1", "vm.waiting big"}},
		{at: 3 * time.Second}, // told once
		{at: 8 * time.Second}, // retried, same reason: quiet
		{at: 9 * time.Second, change: func(w *world) { w.host("host2").MemoryMiB = 4096 }}, // before RetryEvery
		{at: 13 * time.Second, want: []string{"vm.restart big host2"}},
	})
	for _, a := range acts {
		if a.Kind == Waiting && !strings.Contains(a.Reason, "host2: 300 MiB free, needs 512 MiB") {
			t.Errorf("waiting reason %q does not say why host2 does not fit", a.Reason)
		}
	}
}

func TestHigherPriorityGetsTheRoomFirst(t *testing.T) {
	w := newWorld(4096, 700)
	w.vm("a-low", "host1", 512, "ha", "low")
	w.vm("b-medium", "host1", 512, "ha")
	w.vm("c-high", "host1", 512, "ha", "high")
	run(t, w, []step{
		{at: 0, change: down("host1"), want: []string{"host.lost host1"}},
		{at: 2 * time.Second, want: []string{"host.fenced host1", "vm.restart c-high host2", "vm.waiting b-medium", "vm.waiting a-low"}},
	})
}

func TestAntiAffinityIsHonored(t *testing.T) {
	w := newWorld(4096, 4096, 4096)
	w.vm("db1", "host1", 256, "ha", "group=db")
	w.vm("db2", "host2", 256, "ha", "group=db")
	w.vm("db3", "host1", 256, "ha", "group=db")
	run(t, w, []step{
		{at: 0, change: down("host1"), want: []string{"host.lost host1"}},
		// host2 has db2 already; host3 takes one, the other has nowhere to go.
		{at: 2 * time.Second, want: []string{"host.fenced host1", "vm.restart db1 host3", "vm.waiting db3"}},
	})
}

func TestRepeatedFailuresTryOtherHostsThenGiveUp(t *testing.T) {
	w := newWorld(4096, 4096, 4096, 4096)
	w.vm("a", "host1", 256, "ha")
	acts := run(t, w, []step{
		{at: 0, change: down("host1"), want: []string{"host.lost host1"}},
		{at: 2 * time.Second, want: []string{"host.fenced host1", "vm.restart a host2"}},
		{at: 3 * time.Second, change: fails("a", "qemu: could not open disk"), want: []string{"vm.restart a host3"}},
		// no news from host3, which lives, for StartTimeout: it waits (told
		// once), for moving it without host3's word could make two copies
		{at: 3*time.Second + time.Minute, want: []string{"vm.waiting a"}},
		{at: 4*time.Second + time.Minute},
		{at: 5*time.Second + time.Minute, change: fails("a", "qemu: could not open disk"), want: []string{"vm.restart a host4"}},
		{at: 6*time.Second + time.Minute, change: fails("a", "qemu: could not open disk"), want: []string{"vm.failover_failed a"}},
		{at: 10 * time.Minute},
		// The user fixes it and starts it: forgotten, so a later failure
		// of its host fails it over again.
		{at: 11 * time.Minute, change: runs("a")},
		{at: 12 * time.Minute, change: down("host4"), want: []string{"host.lost host4"}},
		{at: 12*time.Minute + 2*time.Second, want: []string{"host.fenced host4", "vm.restart a host2"}},
	})
	for _, a := range acts {
		if a.Kind == GiveUp && !strings.Contains(a.Reason, "3 restarts failed, the last on host4: qemu: could not open disk") {
			t.Errorf("give-up reason %q", a.Reason)
		}
	}
}

func TestLocalDiskVMIsStrandedOnce(t *testing.T) {
	w := newWorld(4096, 4096)
	w.vm("l", "host1", 256, "ha", "local")
	run(t, w, []step{
		{at: 0, change: down("host1"), want: []string{"host.lost host1", "vm.stranded l"}},
		{at: 2 * time.Second, want: []string{"host.fenced host1"}},
		{at: 3 * time.Second},
		{at: 4 * time.Second, change: up("host1"), want: []string{"host.back host1"}},
		{at: 5 * time.Second},
	})
}

func TestDeletedVMIsForgotten(t *testing.T) {
	w := newWorld(4096, 300)
	w.vm("big", "host1", 512, "ha")
	run(t, w, []step{
		{at: 0, change: down("host1"), want: []string{"host.lost host1"}},
		{at: 2 * time.Second, want: []string{"host.fenced host1", "vm.waiting big"}},
		{at: 3 * time.Second, change: func(w *world) { w.vms = nil }},
		{at: 20 * time.Second},
	})
}

func TestSafeAfterCoversTheAgentsFence(t *testing.T) {
	for _, tc := range []struct{ ttl, fence, margin, want time.Duration }{
		{3 * time.Second, 3 * time.Second, 2 * time.Second, 2 * time.Second},
		{3 * time.Second, 5 * time.Second, 2 * time.Second, 4 * time.Second},
		{5 * time.Second, 3 * time.Second, time.Second, time.Second},
	} {
		c := Config{LeaseTTL: tc.ttl, FenceTimeout: tc.fence, Margin: tc.margin}
		if got := c.SafeAfter(); got != tc.want {
			t.Errorf("ttl %s fence %s margin %s: SafeAfter %s, want %s", tc.ttl, tc.fence, tc.margin, got, tc.want)
		}
	}
}
