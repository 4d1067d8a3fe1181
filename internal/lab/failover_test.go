package lab

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// TestLabFailover is the failover issue's check in a lab of three hosts:
// a host running three HA VMs (disks on the shared pool) and one plain VM
// fails; each HA VM answers again on a survivor, with its disk counter
// not lower than before, and at no moment do two copies of one VM run
// (seen from the hosts' processes, and from the write log the guest keeps
// on its disk).
// The plain VM is left alone, shown unknown (after the power cut, the
// user recovers it onto a survivor). After the host comes back it does
// not start the VMs that moved again. Once by power cut, once by
// partition (the host lives on, cut off: its agent fences its HA VMs),
// once by killing the agent alone (its fence watchdog kills them).
func TestLabFailover(t *testing.T) {
	f := startLab(t, 3)
	for _, mode := range []string{Power, Partition, "agent"} {
		t.Run(mode, func(t *testing.T) {
			names := []string{mode + "-ha1", mode + "-ha2", mode + "-ha3"}
			vms := map[string]api.VM{}
			for i, n := range names {
				args := []string{"--pool", "shared", "--host", "host1", "--ha"}
				if i == 0 {
					args = append(args, "--priority", "high")
				}
				vms[n] = f.createServing(n, args...)
			}
			plain := f.createServing(mode+"-plain", "--pool", "shared", "--host", "host1")
			before := map[string]int{}
			for _, n := range names {
				before[n] = diskCounter(t, f, vms[n].IP)
			}
			stop := f.watchSplit(t, vms, func(string) bool { return false })
			cut := time.Now()
			if err := breakHost(f, "host1", mode); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for _, n := range names {
				wg.Add(1)
				go func() {
					defer wg.Done()
					deadline := cut.Add(90 * time.Second)
					var running time.Duration // from the cut to its QEMU running on a survivor
					for time.Now().Before(deadline) {
						if v := f.vm(n); v.Host != "host1" && v.State == api.StateRunning {
							if running == 0 {
								running = time.Since(cut)
							}
							if a, ok := f.get(vms[n].IP); ok {
								t.Logf("%s: QEMU runs on %s %s after the %s; the guest answers after %s (%s)", n, v.Host,
									running.Round(100*time.Millisecond), mode, time.Since(cut).Round(100*time.Millisecond), a)
								if d := counterOf(a); d < before[n] {
									t.Errorf("%s: disk counter %d, was %d before the failure: writes were lost", n, d, before[n])
								}
								return
							}
						}
						time.Sleep(200 * time.Millisecond)
					}
					t.Errorf("%s does not answer on a survivor 90s after the %s: %+v", n, mode, f.vm(n))
				}()
			}
			wg.Wait()
			if v := f.vm(plain.Name); v.Host != "host1" || v.State != api.StateUnknown {
				t.Errorf("plain VM: %s on %s, want unknown on host1 (%s)", v.State, v.Host, v.Error)
			}
			for _, k := range []string{api.EventHostLost, api.EventHostFenced} {
				f.requireHostEvent(t, "host1", k, cut)
			}
			for _, n := range names {
				f.requireEvent(t, n, api.EventVMRestarted)
			}
			recovered := ""
			if mode == Power {
				// The plain VM's host is dead: the user moves it by hand.
				out := f.shoal("vm", "recover", plain.Name, "--force")
				v := f.vm(plain.Name)
				if v.Host == "host1" || v.State != api.StateRunning {
					t.Fatalf("after %q the plain VM is %s on %s", strings.TrimSpace(out), v.State, v.Host)
				}
				recovered = v.Host
				f.waitServing(plain.IP, 90*time.Second)
				f.requireEvent(t, plain.Name, api.EventVMRecovered)
			}
			if err := healHost(f, "host1", mode); err != nil {
				t.Fatal(err)
			}
			f.waitHostUp(t, "host1")
			time.Sleep(3 * time.Second) // host1 has had time to (wrongly) start them
			if max := stop(); max > 1 {
				t.Errorf("two copies of one VM ran at once (%d)", max)
			}
			for _, n := range names {
				v := f.vm(n)
				// Its boot on host1, then its boot on a survivor,
				// never both writing.
				f.requireOneWriter(t, n, v.ID, 2)
				f.requireClean(v.ID, v.Host)
				f.shoal("vm", "delete", n, "--force")
			}
			if recovered != "" {
				// host1 came back and did not start it again.
				f.requireClean(plain.ID, recovered)
			} else {
				f.waitFor("the plain VM to run on host1 again", 60*time.Second, func() bool {
					return f.vm(plain.Name).State == api.StateRunning
				})
			}
			f.shoal("vm", "delete", plain.Name, "--force")
		})
	}
}

// breakHost makes host fail: mode Power or Partition, or "agent" (its
// agent is killed; its VMs and fence watchdog live on).
func breakHost(f *labFixture, host, mode string) error {
	if mode == "agent" {
		return Kill(f.ctx, f.log, f.dir, host)
	}
	return Fail(f.ctx, f.log, f.dir, host, mode)
}

func healHost(f *labFixture, host, mode string) error {
	if mode == "agent" {
		return Revive(f.ctx, f.log, f.dir, host)
	}
	return Heal(f.ctx, f.log, f.dir, host)
}

// diskCounter reads the disk counter of the guest at ip.
func diskCounter(t *testing.T, f *labFixture, ip string) int {
	t.Helper()
	a, ok := f.get(ip)
	if !ok {
		t.Fatalf("%s does not answer: %q", ip, a)
	}
	return counterOf(a)
}

func counterOf(answer string) int {
	n, _ := strconv.Atoi(fields(answer)["disk"])
	return n
}

// requireHostEvent fails the test unless the event log has an event of
// kind about host since then.
func (f *labFixture) requireHostEvent(t *testing.T, host, kind string, since time.Time) {
	t.Helper()
	out := f.shoal("events", "--host", host, "--since", since.UTC().Format(time.RFC3339))
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, kind) {
			t.Logf("event: %s", strings.TrimSpace(line))
			return
		}
	}
	t.Errorf("no %s event for host %s in:\n%s", kind, host, out)
}
