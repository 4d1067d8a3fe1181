package server

import (
	"net/http"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

// ?wait=false must answer at once with the VM as it is.
func TestAPIWaitFalseAnswersAtOnce(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	h.freeze("w") // no host ever reports it

	var vm api.VM
	h.call("POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: "w", Image: "tiny"}).decodeOK(t, http.StatusCreated, &vm)
	if vm.Name != "w" || vm.State != api.StateCreating || vm.Power != api.PowerStopped || vm.IP != "10.57.0.10" {
		t.Fatalf("create answered %+v", vm)
	}
	h.call("POST", "/v1/vms/w/start?wait=false", nil).decodeOK(t, http.StatusOK, &vm)
	if vm.Power != api.PowerRunning || vm.State != api.StateCreating {
		t.Fatalf("start answered power %q state %q", vm.Power, vm.State)
	}
	h.call("POST", "/v1/vms/w/stop?wait=false", api.StopRequest{Force: true}).decodeOK(t, http.StatusOK, &vm)
	if vm.Power != api.PowerStopped {
		t.Fatalf("stop answered power %q", vm.Power)
	}
}

// A malformed ?timeout= is bad input: it must be refused before anything
// is written (DESIGN.md: "Bad input gets a 4xx ... and changes nothing").
func TestAPIBadTimeoutChangesNothing(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)

	h.call("POST", "/v1/vms?timeout=bogus", api.CreateVMRequest{Name: "a", Image: "tiny"}).
		wantError(t, 400, "invalid", `timeout "bogus"`)
	if n := h.vmCount(); n != 0 {
		t.Fatalf("a refused create left %d VMs", n)
	}

	h.createVM(api.CreateVMRequest{Name: "b", Image: "tiny"})
	h.call("POST", "/v1/vms/b/start?timeout=bogus", nil).wantError(t, 400, "invalid", `timeout "bogus"`)
	if p := h.spec("b").Power; p != api.PowerStopped {
		t.Fatalf("a refused start set power %q", p)
	}

	h.freeze("b")
	h.call("DELETE", "/v1/vms/b?timeout=bogus", nil).wantError(t, 400, "invalid", `timeout "bogus"`)
	if h.spec("b").Deleting {
		t.Fatal("a refused delete marked the VM deleting")
	}
}
