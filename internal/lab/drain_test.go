package lab

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// TestLabDrain is the maintenance check: host1 runs four VMs (two with
// their disk on the shared pool, two on its local pool), each with a
// client polling it; 'shoal host drain host1' moves them all to host2
// live while every client keeps being served, host1 takes no new VM while
// in maintenance, and 'shoal host resume host1' puts it back in service.
func TestLabDrain(t *testing.T) {
	f := startLab(t, 2)
	var cases []*failCase
	for i, pool := range []string{"shared", "local", "shared", "local"} {
		cases = append(cases, f.startCase(t, fmt.Sprintf("d%d", i+1), pool))
	}
	time.Sleep(time.Second)

	// The default: two migrations at a time. Four emulated guests, each
	// serving a client every 10 ms, already fill the two cores of a CI
	// machine; with two migrations on top, the clients' longest requests
	// were 1.1 to 2.7 s in three runs here (the client gives up at 5 s).
	out := f.shoal("host", "drain", "host1")
	t.Logf("drain:\n%s", out)
	var h api.Host
	if err := json.Unmarshal([]byte(f.shoal("host", "show", "host1", "-o", "json")), &h); err != nil {
		t.Fatal(err)
	}
	if h.State != api.HostMaintenance {
		t.Errorf("host1 is %q after the drain, want %s", h.State, api.HostMaintenance)
	}
	var rep api.DrainReport
	if err := json.Unmarshal([]byte(f.shoal("host", "drain", "host1", "--follow", "-o", "json")), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.State != api.DrainDone || len(rep.VMs) != 4 {
		t.Errorf("drain report: %+v", rep)
	}
	for _, v := range rep.VMs {
		if v.Result != api.DrainMoved || v.How != api.DrainLive || v.To != "host2" {
			t.Errorf("vm %s: %s %s to %s (%s), want moved live to host2", v.Name, v.Result, v.How, v.To, v.Reason)
		}
	}

	// In maintenance, host1 takes no new VM, and says why.
	if out, err := f.try("vm", "create", "late", "--image", "tiny", "--memory", "128M", "--host", "host1", "--start"); err == nil ||
		!strings.Contains(out, "maintenance") {
		t.Errorf("creating a VM on a host in maintenance: %v: %s", err, out)
	}

	for _, c := range cases {
		if v := f.vm(c.name); v.Host != "host2" || v.State != api.StateRunning {
			t.Errorf("vm %s is %s on %s after the drain", c.name, v.State, v.Host)
		}
		c.end(t, "host2", api.MigrationCompleted)
	}
	f.requireEvent(t, "", api.EventDrainDone)

	f.shoal("host", "resume", "host1")
	f.waitHostUp(t, "host1")
	if out, err := f.try("host", "resume", "host1"); err == nil {
		t.Errorf("resuming a host in service succeeded: %s", out)
	}
}
