package server

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

func TestAPIPowerActions(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny"})

	type step struct {
		name   string
		path   string
		body   any
		code   int
		kind   string // for errors
		msg    string // for errors
		state  string // for successes: the VM's state in the answer
		power  string // the desired power in the store afterwards
		forced bool   // spec's StopForce afterwards
	}
	steps := []step{
		{name: "start", path: "/v1/vms/web1/start", code: 200, state: api.StateRunning, power: api.PowerRunning},
		{name: "start again", path: "/v1/vms/web1/start", code: 409, kind: "conflict", msg: `vm "web1" is already running`, power: api.PowerRunning},
		{name: "resume a running VM", path: "/v1/vms/web1/resume", code: 409, kind: "conflict", msg: `vm "web1" is not paused`, power: api.PowerRunning},
		{name: "pause", path: "/v1/vms/web1/pause", code: 200, state: api.StatePaused, power: api.PowerPaused},
		{name: "pause again", path: "/v1/vms/web1/pause", code: 409, kind: "conflict", msg: "only a running VM can be paused", power: api.PowerPaused},
		{name: "start a paused VM", path: "/v1/vms/web1/start", code: 409, kind: "conflict", msg: `vm "web1" is paused: use 'shoal vm resume web1'`, power: api.PowerPaused},
		{name: "resume", path: "/v1/vms/web1/resume", code: 200, state: api.StateRunning, power: api.PowerRunning},
		{name: "stop", path: "/v1/vms/web1/stop", code: 200, state: api.StateStopped, power: api.PowerStopped},
		{name: "stop again", path: "/v1/vms/web1/stop", code: 409, kind: "conflict", msg: `vm "web1" is already stopped`, power: api.PowerStopped},
		{name: "stop again with an empty JSON body", path: "/v1/vms/web1/stop", body: `{}`, code: 409, kind: "conflict", msg: "already stopped", power: api.PowerStopped},
		{name: "pause a stopped VM", path: "/v1/vms/web1/pause", code: 409, kind: "conflict", msg: `vm "web1" is stopped: only a running VM can be paused`, power: api.PowerStopped},
		{name: "restart a stopped VM", path: "/v1/vms/web1/restart", code: 409, kind: "conflict", msg: `vm "web1" is stopped: use 'shoal vm start web1'`, power: api.PowerStopped},
		{name: "forced stop of a stopped VM is allowed", path: "/v1/vms/web1/stop", body: api.StopRequest{Force: true}, code: 200, state: api.StateStopped, power: api.PowerStopped, forced: true},
		{name: "stop with malformed body", path: "/v1/vms/web1/stop", body: `{"force": tru`, code: 400, kind: "invalid", msg: "malformed JSON body", power: api.PowerStopped, forced: true},
		{name: "stop with unknown field", path: "/v1/vms/web1/stop", body: `{"forced": true}`, code: 400, kind: "invalid", msg: "unknown field", power: api.PowerStopped, forced: true},
		{name: "start clears a forced stop", path: "/v1/vms/web1/start", code: 200, state: api.StateRunning, power: api.PowerRunning},
		{name: "unknown action", path: "/v1/vms/web1/reboot", code: 400, kind: "invalid", msg: `unknown action "reboot": use start, stop, restart, pause or resume`, power: api.PowerRunning},
		{name: "forced stop", path: "/v1/vms/web1/stop", body: api.StopRequest{Force: true}, code: 200, state: api.StateStopped, power: api.PowerStopped, forced: true},
	}
	for _, s := range steps {
		r := h.call("POST", s.path, s.body)
		if s.code >= 300 {
			r.wantError(t, s.code, s.kind, s.msg)
		} else {
			var vm api.VM
			r.decodeOK(t, s.code, &vm)
			if vm.State != s.state || vm.Power != s.power || vm.Name != "web1" {
				t.Errorf("%s: answered state %q power %q, want %q %q", s.name, vm.State, vm.Power, s.state, s.power)
			}
		}
		sp := h.spec("web1")
		if sp.Power != s.power || sp.StopForce != s.forced {
			t.Fatalf("%s: spec power %q stop_force %v, want %q %v", s.name, sp.Power, sp.StopForce, s.power, s.forced)
		}
	}

	// Restart bumps the generation and waits until the host has done it.
	h.call("POST", "/v1/vms/web1/start", nil).decodeOK(t, 200, nil)
	for gen := 1; gen <= 2; gen++ {
		var vm api.VM
		h.call("POST", "/v1/vms/web1/restart", nil).decodeOK(t, 200, &vm)
		if vm.State != api.StateRunning || vm.RestartGen != gen {
			t.Fatalf("restart %d answered state %q restart_gen %d", gen, vm.State, vm.RestartGen)
		}
		if sp := h.spec("web1"); sp.RestartGen != gen || sp.Power != api.PowerRunning {
			t.Fatalf("restart %d: spec %+v", gen, sp)
		}
	}

	h.call("POST", "/v1/vms/ghost/start", nil).wantError(t, 404, "not_found", `vm "ghost" not found`, "shoal vm list")
}

// Pause follows what the host reports, not only the desired power: a VM
// whose host has not yet said "running" cannot be paused.
func TestAPIPauseNeedsReportedRunning(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	ctx := context.Background()
	vm := h.createVM(api.CreateVMRequest{Name: "p", Image: "tiny"})
	h.freeze("p")
	_, err := h.st.UpdateVM(ctx, "p", func(sp *api.VMSpec) error { sp.Power = api.PowerRunning; return nil })
	must(t, err)

	for _, tc := range []struct {
		st   api.VMStatus
		want string
	}{
		{api.VMStatus{State: api.StateStopped}, `vm "p" is stopped: only a running VM can be paused`},
		{api.VMStatus{State: api.StateStarting}, `vm "p" is starting: only a running VM can be paused`},
		{api.VMStatus{State: api.StateFailed, Error: "boom"}, `vm "p" is failed: only a running VM can be paused`},
		// A report about another VM does not count.
		{api.VMStatus{ID: "0123456789ab", State: api.StateRunning}, `vm "p" is failed`},
	} {
		h.report("p", tc.st)
		h.call("POST", "/v1/vms/p/pause?wait=false", nil).wantError(t, 409, "conflict", tc.want)
		if sp := h.spec("p"); sp.Power != api.PowerRunning {
			t.Fatalf("refused pause changed power to %q", sp.Power)
		}
	}

	// Reported running, but a stop is pending: no pause either.
	h.report("p", api.VMStatus{ID: vm.ID, State: api.StateRunning})
	_, err = h.st.UpdateVM(ctx, "p", func(sp *api.VMSpec) error { sp.Power = api.PowerStopped; return nil })
	must(t, err)
	h.call("POST", "/v1/vms/p/pause?wait=false", nil).wantError(t, 409, "conflict", "only a running VM can be paused")

	// Desired running and reported running: pause is accepted.
	_, err = h.st.UpdateVM(ctx, "p", func(sp *api.VMSpec) error { sp.Power = api.PowerRunning; return nil })
	must(t, err)
	h.unfreeze("p")
	var got api.VM
	h.call("POST", "/v1/vms/p/pause", nil).decodeOK(t, 200, &got)
	if got.State != api.StatePaused || h.spec("p").Power != api.PowerPaused {
		t.Fatalf("pause answered %q, spec power %q", got.State, h.spec("p").Power)
	}
}

func TestAPIActionWaitOutcomes(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	ctx := context.Background()

	// The host never answers: the call gives up after the timeout with a
	// hint, and the desired state stays as asked.
	h.createVM(api.CreateVMRequest{Name: "slow", Image: "tiny"})
	h.freeze("slow")
	start := time.Now()
	h.call("POST", "/v1/vms/slow/start?timeout=200ms", nil).
		wantError(t, 503, "unavailable", `vm "slow" is stopped after 200ms`, "its host may be down", "shoal host list")
	if d := time.Since(start); d < 200*time.Millisecond || d > 5*time.Second {
		t.Errorf("a 200ms timeout took %v", d)
	}
	if p := h.spec("slow").Power; p != api.PowerRunning {
		t.Errorf("power %q after a timed-out start, want running", p)
	}
	h.call("POST", "/v1/vms/slow/stop?timeout=0s", nil).wantError(t, 400, "invalid", `timeout "0s" is not a duration`)

	// The host reports a failure while the call waits: the call fails
	// with the host's message.
	vm := h.createVM(api.CreateVMRequest{Name: "bad", Image: "tiny"})
	h.freeze("bad")
	res := make(chan apiResp, 1)
	go func() { res <- h.call("POST", "/v1/vms/bad/start?timeout=10s", nil) }()
	var r apiResp
	for done := false; !done; {
		if h.spec("bad").Power == api.PowerRunning {
			h.report("bad", api.VMStatus{ID: vm.ID, Host: "host1", State: api.StateFailed, Error: "qemu: could not open disk"})
		}
		select {
		case r = <-res:
			done = true
		case <-time.After(20 * time.Millisecond):
		}
	}
	r.wantError(t, 409, "conflict", `vm "bad" failed on host host1: qemu: could not open disk`)
	// The desired state is still "running"; starting again retries.
	var retry api.VM
	h.call("POST", "/v1/vms/bad/start?wait=false", nil).decodeOK(t, 200, &retry)
	if retry.Power != api.PowerRunning || retry.State != api.StateFailed {
		t.Fatalf("retrying start answered power %q state %q", retry.Power, retry.State)
	}

	// An old failure (reported before the call) does not fail a new start.
	h.unfreeze("bad")
	_, err := h.st.UpdateVM(ctx, "bad", func(sp *api.VMSpec) error { sp.Power = api.PowerStopped; return nil })
	must(t, err)
	h.freeze("bad")
	h.report("bad", api.VMStatus{ID: vm.ID, Host: "host1", State: api.StateFailed, Error: "old"})
	time.Sleep(10 * time.Millisecond)
	go func() { res <- h.call("POST", "/v1/vms/bad/start?timeout=5s", nil) }()
	time.Sleep(100 * time.Millisecond)
	h.unfreeze("bad")
	var got api.VM
	(<-res).decodeOK(t, 200, &got)
	if got.State != api.StateRunning {
		t.Fatalf("start after an old failure answered %q", got.State)
	}
}

func TestAPIDeleteVM(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)

	run := h.createVM(api.CreateVMRequest{Name: "run", Image: "tiny", Start: true})
	h.freeze("run")
	h.call("DELETE", "/v1/vms/run", nil).
		wantError(t, 409, "conflict", `vm "run" is running: stop it first, or delete with --force`)
	h.call("DELETE", "/v1/vms/run?force=false", nil).wantError(t, 409, "conflict", "stop it first")
	if sp := h.spec("run"); sp.Deleting {
		t.Fatal("a refused delete marked the VM deleting")
	}

	r := h.call("DELETE", "/v1/vms/run?force=true&wait=false", nil)
	if r.code != http.StatusAccepted || len(r.body) != 0 {
		t.Fatalf("forced delete: %d %q, want 202 and no body", r.code, r.body)
	}
	if sp := h.spec("run"); !sp.Deleting || sp.ID != run.ID {
		t.Fatalf("after a forced delete spec %+v, want deleting", sp)
	}
	var vm api.VM
	h.call("GET", "/v1/vms/run", nil).decodeOK(t, 200, &vm)
	if vm.State != api.StateDeleting {
		t.Fatalf("state %q while deleting", vm.State)
	}
	for _, a := range []string{"start", "stop", "restart", "pause", "resume"} {
		h.call("POST", "/v1/vms/run/"+a+"?wait=false", nil).wantError(t, 409, "conflict", `vm "run" is being deleted`)
	}
	// Asking again is harmless.
	if r := h.call("DELETE", "/v1/vms/run?force=1&wait=0", nil); r.code != http.StatusAccepted {
		t.Fatalf("second forced delete: %d %s", r.code, r.body)
	}

	// Desired stopped but still reported running: not without force.
	still := h.createVM(api.CreateVMRequest{Name: "still", Image: "tiny"})
	h.freeze("still")
	h.report("still", api.VMStatus{ID: still.ID, State: api.StateRunning})
	h.call("DELETE", "/v1/vms/still?wait=false", nil).wantError(t, 409, "conflict", `vm "still" is running`)
	h.report("still", api.VMStatus{ID: still.ID, State: api.StatePaused})
	h.call("DELETE", "/v1/vms/still?wait=false", nil).wantError(t, 409, "conflict", `vm "still" is paused`)

	// A stopped VM is deleted without force; the call waits until the
	// host has removed it, and its address is free again.
	h.createVM(api.CreateVMRequest{Name: "gone", Image: "tiny"})
	before := len(h.usedIPs())
	if r := h.call("DELETE", "/v1/vms/gone", nil); r.code != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("delete: %d %q, want 204", r.code, r.body)
	}
	h.call("GET", "/v1/vms/gone", nil).wantError(t, 404, "not_found", `vm "gone" not found`)
	if after := len(h.usedIPs()); after != before-1 {
		t.Fatalf("used addresses %d -> %d after delete", before, after)
	}

	// The host never removes it: the wait gives up with a message.
	h.call("DELETE", "/v1/vms/run?force=true&timeout=100ms", nil).
		wantError(t, 503, "unavailable", `vm "run" is still being deleted by its host after 100ms`)

	h.call("DELETE", "/v1/vms/ghost", nil).wantError(t, 404, "not_found", `vm "ghost" not found`, "shoal vm list")
}

func TestAPIDeleteImage(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	dir := filepath.Join(h.cfg.ImageDir, "tiny")
	must(t, os.MkdirAll(dir, 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "disk.qcow2"), []byte("not really"), 0o644))

	h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny"})
	h.call("DELETE", "/v1/images/tiny", nil).
		wantError(t, 409, "conflict", `image "tiny" is used by vm "web1": delete the VM first`)
	if _, err := os.Stat(filepath.Join(dir, "disk.qcow2")); err != nil {
		t.Fatalf("refused delete removed files: %v", err)
	}
	var ims []api.Image
	h.call("GET", "/v1/images", nil).decodeOK(t, 200, &ims)
	if len(ims) != 1 {
		t.Fatalf("images after refused delete: %+v", ims)
	}

	// A VM being deleted still holds its image.
	h.freeze("web1")
	h.call("DELETE", "/v1/vms/web1?wait=false", nil).decodeOK(t, http.StatusAccepted, nil)
	h.call("DELETE", "/v1/images/tiny", nil).wantError(t, 409, "conflict", `used by vm "web1"`)
	h.unfreeze("web1")
	deadline := time.Now().Add(5 * time.Second)
	for h.vmCount() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("fake host did not remove web1")
		}
		time.Sleep(10 * time.Millisecond)
	}

	if r := h.call("DELETE", "/v1/images/tiny", nil); r.code != http.StatusNoContent {
		t.Fatalf("delete unused image: %d %s", r.code, r.body)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("image files left: %v", err)
	}
	h.call("GET", "/v1/images", nil).decodeOK(t, 200, &ims)
	if len(ims) != 0 {
		t.Fatalf("images after delete: %+v", ims)
	}
	h.call("DELETE", "/v1/images/tiny", nil).wantError(t, 404, "not_found", `image "tiny" not found`, "shoal image list")
	h.call("POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: "web2", Image: "tiny"}).
		wantError(t, 404, "not_found", `image "tiny" not found`)
}

// Image requests refused before any disk work is done.
func TestAPIImageBadInput(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	h.call("POST", "/v1/images/build", map[string]string{"name": "ubuntu"}).
		wantError(t, 400, "invalid", `cannot build image "ubuntu": only 'tiny' can be built`)
	h.call("POST", "/v1/images/build", `{"name": "tiny", "size": 1}`).wantError(t, 400, "invalid", "unknown field")
	h.call("POST", "/v1/images/build", ``).wantError(t, 400, "invalid", "request body is empty")
	h.call("PUT", "/v1/images/Bad_Name", "data").wantError(t, 400, "invalid", `image name "Bad_Name"`)
	h.call("PUT", "/v1/images/tiny", "data").wantError(t, 409, "conflict", `image "tiny" already exists`)
	ents, err := os.ReadDir(h.cfg.ImageDir)
	must(t, err)
	if len(ents) != 0 {
		t.Fatalf("refused imports left %d entries in the image dir", len(ents))
	}
}

// This server reaches no host directly (Config.Hosts is nil).
func TestAPIConsoleAndLogsWithoutHostAccess(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny", Start: true})
	h.call("GET", "/v1/vms/web1/logs", nil).
		wantError(t, 503, "unavailable", `host host1 of vm "web1" is not reachable from this server`)
	h.call("GET", "/v1/vms/web1/console", nil).wantError(t, 400, "invalid", "Upgrade: shoal-console")
	h.call("GET", "/v1/vms/ghost/logs", nil).wantError(t, 404, "not_found", `vm "ghost" not found`)
}

// A name can be reused; the new VM never shows what a host said about the
// old one, even when a late report arrives after the old one is gone.
func TestAPINameReuseIgnoresOldReports(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	old := h.createVM(api.CreateVMRequest{Name: "r", Image: "tiny", Start: true})
	if old.State != api.StateRunning {
		t.Fatalf("old r is %q", old.State)
	}
	if r := h.call("DELETE", "/v1/vms/r?force=true", nil); r.code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.code, r.body)
	}
	h.freeze("r")
	var vm api.VM
	h.call("POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: "r", Image: "tiny"}).decodeOK(t, http.StatusCreated, &vm)
	if vm.ID == old.ID || vm.State != api.StateCreating {
		t.Fatalf("new r: id %q (old %q) state %q", vm.ID, old.ID, vm.State)
	}
	// The old VM's host reports late.
	must(t, h.st.PutStatus(context.Background(), api.VMStatus{ID: old.ID, Host: "host1", State: api.StateRunning, PID: 99}))
	h.call("GET", "/v1/vms/r", nil).decodeOK(t, 200, &vm)
	if vm.State != api.StateCreating || vm.PID != 0 {
		t.Fatalf("new r shows state %q pid %d", vm.State, vm.PID)
	}
	var list []api.VM
	h.call("GET", "/v1/vms", nil).decodeOK(t, 200, &list)
	if len(list) != 1 || list[0].State != api.StateCreating || list[0].ID != vm.ID {
		t.Fatalf("list = %+v", list)
	}
}
