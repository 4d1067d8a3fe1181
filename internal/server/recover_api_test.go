package server

import (
	"context"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
)

// kill makes host's liveness lease gone, as if it expired.
func (h *apiHarness) kill(host string) {
	h.t.Helper()
	_, err := h.st.Client().Delete(context.Background(), store.AlivePrefix+host)
	must(h.t, err)
}

// seenDown makes the failover controller believe it first saw host down
// ago.
func (h *apiHarness) seenDown(host string, ago time.Duration) {
	f := h.srv.failover
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down == nil {
		f.down = map[string]time.Time{}
	}
	f.down[host] = time.Now().Add(-ago)
}

// recoverHarness: host1 (shared pool) runs web1 (running), idle1
// (stopped) and loc1 (local pool); host3 is up and roomy, host2 in
// maintenance, host4 has no shared pool, host5 is down, host6 too small.
func recoverHarness(t *testing.T) *apiHarness {
	shared := func(name string, mem int64) api.Host {
		h := testHost(name, mem, 4)
		h.Pools = []string{"local", "shared"}
		return h
	}
	maint := shared("host2", 4096)
	maint.State = api.HostMaintenance
	down := shared("host5", 4096)
	down.LastHeartbeat = time.Now().Add(-time.Hour) // no liveness lease
	h := newAPIHarness(t, shared("host1", 4096), maint, shared("host3", 4096), testHost("host4", 4096, 4), down, shared("host6", 128))
	h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny", Host: "host1", Pool: "shared", Start: true})
	h.createVM(api.CreateVMRequest{Name: "idle1", Image: "tiny", Host: "host1", Pool: "shared"})
	h.createVM(api.CreateVMRequest{Name: "loc1", Image: "tiny", Host: "host1", Start: true})
	h.createVM(api.CreateVMRequest{Name: "up1", Image: "tiny", Host: "host3", Pool: "shared", Start: true})
	return h
}

func TestAPIRecoverRefusals(t *testing.T) {
	t.Parallel()
	h := recoverHarness(t)
	h.createVM(api.CreateVMRequest{Name: "del1", Image: "tiny", Host: "host1", Pool: "shared"})
	h.createVM(api.CreateVMRequest{Name: "mig1", Image: "tiny", Host: "host1", Pool: "shared", Start: true})
	ctx := context.Background()
	h.freeze("del1")
	h.freeze("mig1")
	_, err := h.st.UpdateVM(ctx, "del1", func(sp *api.VMSpec) error { sp.Deleting = true; return nil })
	must(t, err)
	_, err = h.st.UpdateVM(ctx, "mig1", func(sp *api.VMSpec) error {
		sp.Migration = &api.Migration{ID: "m1", Source: "host1", Target: "host3"}
		return nil
	})
	must(t, err)

	// Host up: migrate instead.
	h.call("POST", "/v1/vms/web1/recover", api.RecoverRequest{To: "host3"}).wantError(t, 409, "conflict",
		"host host1 is up: vm web1 runs there; use 'shoal vm migrate' to move it")

	h.kill("host1")
	// Not fenced: the controller has not seen it down yet, then just now.
	force := api.RecoverRequest{Force: true}
	h.call("POST", "/v1/vms/web1/recover", force).wantError(t, 409, "conflict", "host host1 is not fenced yet: try again in 2s")
	must(t, h.srv.failover.look(ctx))
	if _, ok := h.srv.failover.downSince("host1"); !ok {
		t.Fatal("the failover controller did not note host1 down")
	}
	before := h.snapshot() // (the look recorded host1 lost)
	h.call("POST", "/v1/vms/web1/recover", force).wantError(t, 409, "conflict", "host host1 is not fenced yet: try again in 2s")
	h.seenDown("host1", 1500*time.Millisecond)
	h.call("POST", "/v1/vms/web1/recover", force).wantError(t, 409, "conflict", "host host1 is not fenced yet: try again in 1s")

	h.seenDown("host1", time.Minute)
	for _, c := range []struct {
		name, vm, body string
		code           int
		kind           string
		want           []string
	}{
		{"unknown vm", "ghost", `{}`, 404, "not_found", []string{`vm "ghost" not found`, "shoal vm list"}},
		{"deleting", "del1", `{}`, 409, "conflict", []string{"being deleted"}},
		{"migrating", "mig1", `{}`, 409, "conflict", []string{"migrating to host3", "try again shortly"}},
		{"local pool", "loc1", `{}`, 409, "conflict",
			[]string{"vm loc1 has its disk on the local pool of host1, which is down: it can run again only when host1 is back"}},
		{"onto its own host", "web1", `{"to":"host1","force":true}`, 409, "conflict", []string{"host1, which is down", "another host"}},
		{"unknown target", "web1", `{"to":"nope","force":true}`, 404, "not_found", []string{`host "nope" not found`}},
		{"bad target name", "web1", `{"to":"Bad_Host","force":true}`, 400, "invalid", []string{"host"}},
		{"target down", "web1", `{"to":"host5","force":true}`, 507, "capacity", []string{"host5: down"}},
		{"target in maintenance", "web1", `{"to":"host2","force":true}`, 507, "capacity", []string{"host2: in maintenance"}},
		{"target without the pool", "web1", `{"to":"host4","force":true}`, 507, "capacity", []string{`host4: no pool "shared"`}},
		{"target too small", "web1", `{"to":"host6","force":true}`, 507, "capacity", []string{"host6: 128 MiB free, needs 256 MiB"}},
		{"not HA, no --force", "web1", `{"to":"host3"}`, 409, "conflict", []string{"vm web1 is not HA", "make sure host1 is powered off", "--force"}},
		{"unknown field", "web1", `{"host":"host3"}`, 400, "invalid", []string{"malformed JSON"}},
		{"bad timeout", "web1", `{}`, 400, "invalid", []string{"timeout"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := "/v1/vms/" + c.vm + "/recover"
			if c.name == "bad timeout" {
				path += "?timeout=soon"
			}
			h.call("POST", path, c.body).wantError(t, c.code, c.kind, c.want...)
		})
	}
	if after := h.snapshot(); !reflect.DeepEqual(after, before) {
		t.Errorf("a refused recover changed something:\nbefore %+v\nafter  %+v", before, after)
	}

	// Its host back: no longer the user's business.
	_, err = h.st.MarkAlive(ctx, "host1", 30*time.Second)
	must(t, err)
	must(t, h.srv.failover.look(ctx))
	if _, ok := h.srv.failover.downSince("host1"); ok {
		t.Error("host1 is up, yet the failover controller still notes it down")
	}
	h.call("POST", "/v1/vms/web1/recover", nil).wantError(t, 409, "conflict", "host host1 is up")
}

func TestAPIRecover(t *testing.T) {
	t.Parallel()
	h := recoverHarness(t)
	h.kill("host1")
	h.seenDown("host1", time.Minute)

	var vm api.VM
	h.call("POST", "/v1/vms/web1/recover?timeout=10s", api.RecoverRequest{To: "host3", Force: true}).decodeOK(t, http.StatusOK, &vm)
	if vm.Host != "host3" || vm.State != api.StateRunning {
		t.Errorf("recovered web1 is %s on %s, want running on host3", vm.State, vm.Host)
	}
	if sp := h.spec("web1"); sp.Host != "host3" || sp.Power != api.PowerRunning {
		t.Errorf("web1's spec: host %s power %s", sp.Host, sp.Power)
	}

	// Stopped: reassigned, still stopped; the scheduler picks (host3,
	// the only host that fits).
	h.call("POST", "/v1/vms/idle1/recover?timeout=10s", api.RecoverRequest{Force: true}).decodeOK(t, http.StatusOK, &vm)
	if vm.Host != "host3" || vm.State != api.StateStopped {
		t.Errorf("recovered idle1 is %s on %s, want stopped on host3", vm.State, vm.Host)
	}
	if sp := h.spec("idle1"); sp.Host != "host3" || sp.Power != api.PowerStopped {
		t.Errorf("idle1's spec: host %s power %s", sp.Host, sp.Power)
	}

	evs := h.events("?vm=web1")
	var got *api.Event
	for i := range evs {
		if evs[i].Kind == api.EventVMRecovered {
			got = &evs[i]
		}
	}
	switch {
	case got == nil:
		t.Fatalf("no %s event for web1: %s", api.EventVMRecovered, kinds(evs))
	case got.Host != "host1" || got.To != "host3" || got.Message != "vm web1 recovered from failed host host1 onto host3 by the user":
		t.Errorf("event %+v", *got)
	}

	// Once moved, it is on a live host: recover again is refused.
	h.call("POST", "/v1/vms/web1/recover", nil).wantError(t, 409, "conflict", "host host3 is up")
}

// recoverState is what a refused recover must leave as it was.
type recoverState struct {
	Specs  []api.VMSpec
	Events int
}

func (h *apiHarness) snapshot() recoverState {
	h.t.Helper()
	specs, _, err := h.st.ListVMs(context.Background())
	must(h.t, err)
	return recoverState{Specs: specs, Events: len(h.events("?limit=1000"))}
}
