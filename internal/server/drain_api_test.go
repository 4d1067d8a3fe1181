package server

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// startControllers runs the server's controllers (migrations, drains)
// until the test ends, before etcd stops.
func (h *apiHarness) startControllers() {
	ctx, cancel := context.WithCancel(context.Background())
	h.t.Cleanup(cancel)
	must(h.t, h.srv.Start(ctx))
}

// eventually polls cond until it holds, or fails the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// events lists the events of query that the server's controllers
// recorded: not those of the users' lifecycle actions (those with a
// Requestor: see TestAuditTrail).
func (h *apiHarness) events(query string) []api.Event {
	h.t.Helper()
	var evs []api.Event
	h.call("GET", "/v1/events"+query, nil).decodeOK(h.t, http.StatusOK, &evs)
	return slices.DeleteFunc(evs, func(e api.Event) bool { return e.Requestor != "" })
}

// kinds lists the kinds of events, in order, with the VM of each.
func kinds(evs []api.Event) string {
	var b []string
	for _, e := range evs {
		b = append(b, e.Kind+" "+e.VM)
	}
	return strings.Join(b, ", ")
}

func (h *apiHarness) drain(host string) api.DrainReport {
	h.t.Helper()
	var rep api.DrainReport
	h.call("GET", "/v1/hosts/"+host+"/drain", nil).decodeOK(h.t, http.StatusOK, &rep)
	return rep
}

func (h *apiHarness) migrationsInFlight() []string {
	h.t.Helper()
	specs, _, err := h.st.ListVMs(context.Background())
	must(h.t, err)
	var out []string
	for _, sp := range specs {
		if sp.Migration != nil {
			out = append(out, sp.Name)
		}
	}
	return out
}

func TestAPIMigrationEvents(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t, testHost("host1", 4096, 4), testHost("host2", 4096, 4))
	h.startControllers()
	h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny", Host: "host1", Start: true})
	h.createVM(api.CreateVMRequest{Name: "other", Image: "tiny", Host: "host1", Start: true})

	h.call("POST", "/v1/vms/web1/migrate", api.MigrateRequest{}).decodeOK(t, http.StatusAccepted, nil)
	evs := h.events("?vm=web1")
	if len(evs) != 1 || evs[0].Kind != api.EventMigrationStarted || evs[0].Host != "host1" || evs[0].To != "host2" ||
		evs[0].Severity != api.SeverityInfo || !strings.Contains(evs[0].Message, "live migration of vm web1 from host1 to host2 started") {
		t.Fatalf("events of web1: %+v", evs)
	}
	if evs := h.events("?vm=other"); len(evs) != 0 {
		t.Errorf("events of another VM: %+v", evs)
	}
	if evs := h.events("?host=host2&since=1m"); len(evs) != 1 {
		t.Errorf("events of host2, the target: %+v", evs)
	}

	// Cancelled: a warning that says where the VM runs.
	h.call("DELETE", "/v1/vms/web1/migration", nil).decodeOK(t, http.StatusOK, nil)
	eventually(t, 10*time.Second, "a migration.cancelled event", func() bool { return len(h.events("?vm=web1")) == 2 })
	if e := h.events("?vm=web1")[1]; e.Kind != api.EventMigrationCancelled || e.Severity != api.SeverityWarning ||
		!strings.Contains(e.Message, "(cancelled by the user); it still runs on host1") {
		t.Errorf("cancel event: %+v", e)
	}

	// Completed: the figures.
	h.letMigrate(true)
	h.call("POST", "/v1/vms/web1/migrate", api.MigrateRequest{}).decodeOK(t, http.StatusAccepted, nil)
	eventually(t, 10*time.Second, "a migration.completed event", func() bool { return len(h.events("?vm=web1")) == 4 })
	evs = h.events("?vm=web1")
	if got := kinds(evs); got != "migration.started web1, migration.cancelled web1, migration.started web1, migration.completed web1" {
		t.Errorf("events: %s", got)
	}
	if e := evs[3]; e.Figures["downtime_ms"] != 41 || e.Figures["bytes"] != 70<<20 || e.Figures["total_ms"] <= 0 ||
		!strings.Contains(e.Message, "vm web1 moved live from host1 to host2") || !strings.Contains(e.Message, "downtime 41 ms, 70.0 MiB") {
		t.Errorf("completed event: %+v", e)
	}
	if evs := h.events("?vm=web1&limit=1"); len(evs) != 1 || evs[0].Kind != api.EventMigrationCompleted {
		t.Errorf("newest event: %+v", evs)
	}
	if evs := h.events("?after=" + evs[1].ID); kinds(evs) != "migration.started web1, migration.completed web1" {
		t.Errorf("events after the second: %s", kinds(evs))
	}

	h.call("GET", "/v1/events?limit=0", nil).wantError(t, 400, "invalid", "limit", "1 to 1000")
	h.call("GET", "/v1/events?since=yesterday", nil).wantError(t, 400, "invalid", "since", "10m")
	h.callToken("", "GET", "/v1/events", nil).wantError(t, 401, "unauthorized")
}

func TestAPIDrainHost(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t, testHost("host1", 4096, 4), testHost("host2", 4096, 4))
	h.startControllers()
	for _, n := range []string{"a1", "a2", "a3"} {
		h.createVM(api.CreateVMRequest{Name: n, Image: "tiny", Host: "host1", Start: true})
	}

	var rep api.DrainReport
	h.call("POST", "/v1/hosts/host1/drain", api.DrainRequest{Parallel: 2}).decodeOK(t, http.StatusAccepted, &rep)
	if rep.Host != "host1" || rep.State != api.DrainRunning || rep.Parallel != 2 || rep.Options.DowntimeMs != defaultDowntimeMs {
		t.Fatalf("drain answer: %+v", rep)
	}
	if got := fmt.Sprint(results(rep)); got != "[a1 migrating a2 migrating a3 pending]" {
		t.Errorf("after the first look: %s", got)
	}
	// At most 2 at once, however long they take.
	time.Sleep(5 * drainTick)
	if got := h.migrationsInFlight(); fmt.Sprint(got) != "[a1 a2]" {
		t.Errorf("migrations in flight: %v", got)
	}
	var host api.Host
	h.call("GET", "/v1/hosts/host1", nil).decodeOK(t, 200, &host)
	if host.State != api.HostMaintenance {
		t.Errorf("host1 is %q while drained", host.State)
	}
	h.call("POST", "/v1/hosts/host1/drain", nil).wantError(t, 409, "conflict", "host host1 is already being drained", "shoal host resume host1")

	// Nothing new lands on a host in maintenance.
	if vm := h.createVM(api.CreateVMRequest{Name: "new1", Image: "tiny"}); vm.Host != "host2" {
		t.Errorf("new VM placed on %s", vm.Host)
	}
	h.call("POST", "/v1/vms?timeout=10s", api.CreateVMRequest{Name: "new2", Image: "tiny", Host: "host1"}).
		wantError(t, 507, "capacity", "host1: in maintenance")

	h.letMigrate(true)
	eventually(t, 20*time.Second, "the drain to end", func() bool { return h.drain("host1").State == api.DrainDone })
	rep = h.drain("host1")
	for _, e := range rep.VMs {
		if e.Result != api.DrainMoved || e.How != api.DrainLive || e.To != "host2" || e.DowntimeMs != 41 {
			t.Errorf("vm %+v", e)
		}
		if sp := h.spec(e.Name); sp.Host != "host2" || sp.Migration != nil {
			t.Errorf("vm %s on %s, migration %+v", e.Name, sp.Host, sp.Migration)
		}
	}
	if len(rep.VMs) != 3 || rep.EndedAt.IsZero() {
		t.Errorf("report: %+v", rep)
	}
	h.call("GET", "/v1/hosts/host1", nil).decodeOK(t, 200, &host)
	if host.State != api.HostMaintenance {
		t.Errorf("host1 is %q after its drain, want it in maintenance until resumed", host.State)
	}
	// The events follow the report's write.
	eventually(t, 5*time.Second, "a drain.done event", func() bool {
		evs := h.events("?host=host1&limit=1")
		return len(evs) == 1 && evs[0].Kind == api.EventDrainDone
	})
	evs := h.events("?host=host1&limit=1000")
	var drainKinds []string
	for _, e := range evs {
		if strings.HasPrefix(e.Kind, "drain.") {
			drainKinds = append(drainKinds, e.Kind+" "+e.VM)
		}
	}
	slices.Sort(drainKinds[1 : len(drainKinds)-1]) // VMs whose moves end at once come in any order
	if got := strings.Join(drainKinds, ", "); got != "drain.started , drain.vm a1, drain.vm a2, drain.vm a3, drain.done " {
		t.Errorf("drain events: %s", got)
	}
	last := evs[len(evs)-1]
	if last.Kind != api.EventDrainDone || last.Figures["live"] != 3 || !strings.Contains(last.Message, "3 VMs moved off live") {
		t.Errorf("drain.done: %+v", last)
	}

	// Back in service.
	h.call("POST", "/v1/hosts/host1/resume", nil).decodeOK(t, 200, &host)
	if host.State != api.HostUp {
		t.Errorf("host1 is %q after resume", host.State)
	}
	if vm := h.createVM(api.CreateVMRequest{Name: "new3", Image: "tiny", Host: "host1"}); vm.Host != "host1" {
		t.Errorf("after resume, pinned VM on %s", vm.Host)
	}
	if evs := h.events("?host=host1&limit=1"); len(evs) != 1 || evs[0].Kind != api.EventHostResumed {
		t.Errorf("last event: %+v", evs)
	}
	h.call("POST", "/v1/hosts/host1/resume", nil).wantError(t, 409, "conflict", "host host1 is not in maintenance")

	h.call("POST", "/v1/hosts/ghost/drain", nil).wantError(t, 404, "not_found", `host "ghost" not found`, "shoal host list")
	h.call("POST", "/v1/hosts/ghost/resume", nil).wantError(t, 404, "not_found", `host "ghost" not found`)
	h.call("GET", "/v1/hosts/ghost/drain", nil).wantError(t, 404, "not_found", `host "ghost" not found`)
	h.call("GET", "/v1/hosts/host2/drain", nil).wantError(t, 404, "not_found", "host host2 has never been drained")
	h.call("POST", "/v1/hosts/host2/drain", api.DrainRequest{Parallel: -1}).wantError(t, 400, "invalid", "parallel -1 is out of range")
	h.call("POST", "/v1/hosts/host2/drain", `{"paralel": 2}`).wantError(t, 400, "invalid", "unknown field")
}

func results(rep api.DrainReport) []string {
	var out []string
	for _, e := range rep.VMs {
		out = append(out, e.Name+" "+e.Result)
	}
	return out
}

func TestAPIDrainStoppedAndResumed(t *testing.T) {
	t.Parallel()
	shared := func(name string) api.Host {
		h := testHost(name, 4096, 4)
		h.Pools = []string{"local", "shared"}
		return h
	}
	down := testHost("host3", 4096, 4)
	down.LastHeartbeat = time.Now().Add(-time.Hour) // no liveness lease
	h := newAPIHarness(t, shared("host1"), shared("host2"), down)
	h.startControllers()
	h.createVM(api.CreateVMRequest{Name: "s1", Image: "tiny", Host: "host1", Pool: "shared"})
	h.createVM(api.CreateVMRequest{Name: "l1", Image: "tiny", Host: "host1"})
	h.createVM(api.CreateVMRequest{Name: "r1", Image: "tiny", Host: "host1", Start: true})
	h.createVM(api.CreateVMRequest{Name: "r2", Image: "tiny", Host: "host1", Start: true})
	h.createVM(api.CreateVMRequest{Name: "p1", Image: "tiny", Host: "host1", Start: true})
	h.call("POST", "/v1/vms/p1/pause", nil).decodeOK(t, 200, nil)

	h.call("POST", "/v1/hosts/host3/drain", nil).wantError(t, 409, "conflict", "host host3 is down", "live migration, which needs the host up")

	var rep api.DrainReport
	h.call("POST", "/v1/hosts/host1/drain", api.DrainRequest{Parallel: 1}).decodeOK(t, http.StatusAccepted, &rep)
	want := "[l1 stayed p1 stayed r1 migrating r2 pending s1 moved]"
	if got := fmt.Sprint(results(rep)); got != want {
		t.Fatalf("after the first look: %s, want %s", got, want)
	}
	if sp := h.spec("s1"); sp.Host != "host2" {
		t.Errorf("stopped VM on the shared pool is on %s", sp.Host)
	}
	for _, e := range rep.VMs {
		switch e.Name {
		case "l1":
			if !strings.Contains(e.Reason, "local pool of host1") {
				t.Errorf("l1: %q", e.Reason)
			}
		case "p1":
			if !strings.Contains(e.Reason, "paused") {
				t.Errorf("p1: %q", e.Reason)
			}
		case "s1":
			if e.How != api.DrainReassigned || e.To != "host2" {
				t.Errorf("s1: %+v", e)
			}
		}
	}

	// A VM of a host in maintenance does not start there.
	h.call("POST", "/v1/vms/l1/start", nil).wantError(t, 409, "conflict", "host host1, which is in maintenance", "shoal host resume host1")

	// Resumed while r1 migrates: r2 is not moved, r1's migration ends.
	h.call("POST", "/v1/hosts/host1/resume", nil).decodeOK(t, 200, nil)
	h.letMigrate(true)
	eventually(t, 20*time.Second, "the drain to end", func() bool { return h.drain("host1").State == api.DrainDone })
	rep = h.drain("host1")
	if got := fmt.Sprint(results(rep)); !rep.Resumed || got != "[l1 stayed p1 stayed r1 moved r2 stayed s1 moved]" {
		t.Errorf("after resume: %s (resumed %v)", got, rep.Resumed)
	}
	if e := rep.VMs[3]; !strings.Contains(e.Reason, "put back in service") {
		t.Errorf("r2: %q", e.Reason)
	}
	if sp := h.spec("r2"); sp.Host != "host1" || sp.Migration != nil {
		t.Errorf("r2 moved: %+v", sp)
	}
	eventually(t, 5*time.Second, "a drain.done event", func() bool {
		evs := h.events("?host=host1&limit=1")
		return len(evs) == 1 && evs[0].Kind == api.EventDrainDone
	})
	evs := h.events("?host=host1&limit=1")
	if !strings.Contains(evs[0].Message, "ended early") {
		t.Errorf("last event: %+v", evs)
	}
	// A drain of a host that is not empty at its end is a warning.
	if evs[0].Severity != api.SeverityWarning || evs[0].Figures["stayed"] != 3 {
		t.Errorf("drain.done: %+v", evs[0])
	}
}
