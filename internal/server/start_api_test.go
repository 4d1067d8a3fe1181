package server

import (
	"net/http"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

// Starting a stopped VM needs room on its host, like creating a running
// one: two stopped VMs that together exceed the host cannot both start.
func TestAPIStartChecksCapacity(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t) // host1: 4096 MiB, 4 CPUs
	h.createVM(api.CreateVMRequest{Name: "a", Image: "tiny", Memory: "3000M"})
	h.createVM(api.CreateVMRequest{Name: "b", Image: "tiny", Memory: "3000M"})
	if r := h.call("POST", "/v1/vms/a/start", nil); r.code != http.StatusOK {
		t.Fatalf("first start: %d %s", r.code, r.body)
	}
	h.call("POST", "/v1/vms/b/start", nil).wantError(t, http.StatusInsufficientStorage, "capacity", `no host fits vm "b"`, "host1", "needs 3000 MiB")
	if sp := h.spec("b"); sp.Power != api.PowerStopped {
		t.Fatalf("a refused start changed the spec: power %s", sp.Power)
	}
	if r := h.call("POST", "/v1/vms/a/stop", nil); r.code != http.StatusOK {
		t.Fatalf("stop: %d %s", r.code, r.body)
	}
	if r := h.call("POST", "/v1/vms/b/start", nil); r.code != http.StatusOK {
		t.Fatalf("start after the room was freed: %d %s", r.code, r.body)
	}
}
