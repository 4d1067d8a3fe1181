package lab

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// failoverTrials is how many host failures BenchmarkFailover makes.
const failoverTrials = 6

// BenchmarkFailover measures failover in a lab of three hosts: each trial
// cuts the power of the host running two HA VMs (disks on the shared
// pool) and times, from the cut: the host seen down (its lease expired),
// the host fenced, each VM's QEMU running on a survivor, and each guest
// answering HTTP again (its boot included). Then the host comes back and
// the next trial fails the host the VMs now run on.
//
// Rerun (as root): go test -run '^$' -bench Failover -benchtime 1x -timeout 30m ./internal/lab/
func BenchmarkFailover(b *testing.B) {
	f := startLab(b, 3)
	ips := map[string]string{}
	for _, n := range []string{"bf1", "bf2"} {
		ips[n] = f.createServing(n, "--pool", "shared", "--host", "host1", "--ha").IP
	}
	var detect, fence, qemu, answer []time.Duration
	for trial := 0; trial < failoverTrials; trial++ {
		victim := f.vm("bf1").Host
		if v2 := f.vm("bf2").Host; v2 != victim { // put both on one host
			f.shoal("vm", "migrate", "bf2", "--to", victim)
		}
		cut := time.Now()
		if err := Fail(f.ctx, f.log, f.dir, victim, Power); err != nil {
			b.Fatal(err)
		}
		running := map[string]time.Duration{} // from the vm.restarted events
		answered := map[string]time.Duration{}
		f.waitFor("both VMs to answer on survivors", 2*time.Minute, func() bool {
			for n, ip := range ips {
				if _, ok := answered[n]; ok {
					continue
				}
				if v := f.vm(n); v.Host == victim || v.State != api.StateRunning {
					continue
				}
				if _, ok := f.get(ip); ok {
					answered[n] = time.Since(cut)
				}
			}
			return len(answered) == len(ips)
		})
		lost, fenced, restarted := f.failoverEventTimes(b, victim, cut)
		detect, fence = append(detect, lost.Sub(cut)), append(fence, fenced.Sub(cut))
		for n := range ips {
			running[n] = restarted[n].Sub(cut)
			qemu, answer = append(qemu, running[n]), append(answer, answered[n])
		}
		b.Logf("trial %d: %s cut; seen down after %s, fenced after %s; QEMU running after %v; answering after %v",
			trial+1, victim, lost.Sub(cut).Round(10*time.Millisecond), fenced.Sub(cut).Round(10*time.Millisecond), running, answered)
		if err := Heal(f.ctx, f.log, f.dir, victim); err != nil {
			b.Fatal(err)
		}
		f.waitHostUp(b, victim)
	}
	report := func(name string, ds []time.Duration) string {
		slices.Sort(ds)
		unit := strings.ReplaceAll(name, " ", "-")
		b.ReportMetric(float64(ds[len(ds)/2].Milliseconds()), unit+"-p50-ms")
		b.ReportMetric(float64(ds[len(ds)-1].Milliseconds()), unit+"-max-ms")
		return fmt.Sprintf("%-28s p50 %6s  worst %6s  (%d samples)", name, ds[len(ds)/2].Round(10*time.Millisecond), ds[len(ds)-1].Round(10*time.Millisecond), len(ds))
	}
	b.Log("from the power cut:\n" + strings.Join([]string{
		report("host seen down", detect), report("host fenced", fence),
		report("QEMU running on a survivor", qemu), report("guest answering", answer)}, "\n"))
}

// failoverEventTimes returns when the host.lost and host.fenced events of
// host after since were recorded, and each vm.restarted event (the
// controller saw the VM's QEMU running on its new host).
func (f *labFixture) failoverEventTimes(t testing.TB, host string, since time.Time) (lost, fenced time.Time, restarted map[string]time.Time) {
	t.Helper()
	var evs []api.Event
	if err := json.Unmarshal([]byte(f.shoal("events", "--since", since.UTC().Format(time.RFC3339Nano), "-o", "json")), &evs); err != nil {
		t.Fatal(err)
	}
	restarted = map[string]time.Time{}
	for _, e := range evs {
		switch {
		case !e.Time.After(since):
		case e.Kind == api.EventHostLost && e.Host == host && lost.IsZero():
			lost = e.Time
		case e.Kind == api.EventHostFenced && e.Host == host && fenced.IsZero():
			fenced = e.Time
		case e.Kind == api.EventVMRestarted:
			restarted[e.VM] = e.Time
		}
	}
	if lost.IsZero() || fenced.IsZero() {
		t.Fatalf("no host.lost or host.fenced event for %s since %s: %+v", host, since, evs)
	}
	return lost, fenced, restarted
}
