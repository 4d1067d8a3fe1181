package server

import (
	"context"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

func sizeBody(cpus int, memory string) api.UpdateVMRequest {
	var req api.UpdateVMRequest
	if cpus != 0 {
		req.CPUs = &cpus
	}
	if memory != "" {
		req.Memory = &memory
	}
	return req
}

// allocated is what the server counts on host: its memory and its VMs'.
func (h *apiHarness) allocated(host string) int64 {
	h.t.Helper()
	var hv api.Host
	h.call("GET", "/v1/hosts/"+host, nil).decodeOK(h.t, http.StatusOK, &hv)
	return hv.AllocatedMiB
}

// PATCH /v1/vms/{name} with a size: a stopped VM simply has it; bad
// sizes get create's own messages; an unknown VM 404; a VM that
// migrates 409; a refusal writes nothing.
func TestAPIResizeStoppedVM(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t, testHost("host1", 4096, 4), testHost("host2", 4096, 4))
	h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny", Host: "host1"})
	var vm api.VM
	h.call("PATCH", "/v1/vms/web1", sizeBody(2, "512M")).decodeOK(t, http.StatusOK, &vm)
	if vm.CPUs != 2 || vm.MemoryMiB != 512 || vm.RunningCPUs != 0 {
		t.Errorf("answered %d vCPUs, %d MiB (running %d), want 2, 512 and none running", vm.CPUs, vm.MemoryMiB, vm.RunningCPUs)
	}
	if sp := h.spec("web1"); sp.CPUs != 2 || sp.MemoryMiB != 512 {
		t.Fatalf("stored %d vCPUs, %d MiB", sp.CPUs, sp.MemoryMiB)
	}
	// Only the given field changes.
	h.call("PATCH", "/v1/vms/web1", `{"memory": "1G"}`).decodeOK(t, http.StatusOK, &vm)
	if sp := h.spec("web1"); sp.CPUs != 2 || sp.MemoryMiB != 1024 {
		t.Fatalf("after memory 1G: stored %d vCPUs, %d MiB", sp.CPUs, sp.MemoryMiB)
	}
	before := h.spec("web1")
	h.call("PATCH", "/v1/vms/web1", sizeBody(2, "1024M")).decodeOK(t, http.StatusOK, &vm)
	if after := h.spec("web1"); after.Rev != before.Rev {
		t.Errorf("the same size again wrote the spec (revision %d -> %d)", before.Rev, after.Rev)
	}

	for _, tc := range []struct {
		name string
		body any
		msg  string
	}{
		{"zero cpus", `{"cpus": 0}`, "cpus 0 is out of range: use 1 to 64"},
		{"too many cpus", sizeBody(65, ""), "cpus 65 is out of range: use 1 to 64"},
		{"not a size", sizeBody(0, "lots"), `memory: size "lots" is not a number with a unit`},
		{"too little", sizeBody(0, "16M"), "memory 16M is invalid: use whole MiB, at least 32M"},
		{"not whole MiB", sizeBody(2, "100.5M"), "memory 100.5M is invalid: use whole MiB"},
		{"bad with good", `{"cpus": 3, "memory": "0"}`, `memory: size "0" must be greater than zero`},
	} {
		h.call("PATCH", "/v1/vms/web1", tc.body).wantError(t, http.StatusBadRequest, "invalid", tc.msg)
		if after := h.spec("web1"); !reflect.DeepEqual(before, after) {
			t.Errorf("%s: the refused change wrote the spec", tc.name)
		}
	}
	// The same words as a create's.
	h.call("POST", "/v1/vms", api.CreateVMRequest{Name: "x", Image: "tiny", CPUs: 65}).
		wantError(t, http.StatusBadRequest, "invalid", "cpus 65 is out of range: use 1 to 64")
	h.call("POST", "/v1/vms", api.CreateVMRequest{Name: "x", Image: "tiny", Memory: "16M"}).
		wantError(t, http.StatusBadRequest, "invalid", "memory 16M is invalid: use whole MiB, at least 32M")

	h.call("PATCH", "/v1/vms/ghost", sizeBody(2, "")).wantError(t, http.StatusNotFound, "not_found", `vm "ghost" not found`, "shoal vm list")

	// A VM that migrates keeps its size until the migration is over.
	h.createVM(api.CreateVMRequest{Name: "mover", Image: "tiny", Host: "host1", Start: true})
	h.freeze("mover")
	_, err := h.st.UpdateVM(context.Background(), "mover", func(sp *api.VMSpec) error {
		sp.Migration = &api.Migration{ID: "m1", Source: sp.Host, Target: "host2"}
		return nil
	})
	must(t, err)
	before = h.spec("mover")
	h.call("PATCH", "/v1/vms/mover", sizeBody(2, "")).wantError(t, http.StatusConflict, "conflict",
		`vm "mover" is migrating to host2: change its size once the migration is over (or cancel it with 'shoal vm migrate mover --cancel')`)
	if after := h.spec("mover"); !reflect.DeepEqual(before, after) {
		t.Errorf("the refused change wrote the spec of a migrating VM")
	}
}

// A stopped VM may be given a size its host cannot take: its start is
// then refused with the scheduler's reason, and nothing changes; with
// a size that fits, it starts and its host counts the new size.
func TestAPIResizeThenStart(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t) // host1: 4096 MiB, 4 CPUs
	h.createVM(api.CreateVMRequest{Name: "big", Image: "tiny", Memory: "256M"})
	var vm api.VM
	h.call("PATCH", "/v1/vms/big", sizeBody(0, "6G")).decodeOK(t, http.StatusOK, &vm)
	h.call("POST", "/v1/vms/big/start", nil).wantError(t, http.StatusInsufficientStorage, "capacity",
		`no host fits vm "big": host1: 4096 MiB free, needs 6144 MiB`)
	if sp := h.spec("big"); sp.Power != api.PowerStopped {
		t.Fatalf("refused start wrote power %q", sp.Power)
	}
	if got := h.allocated("host1"); got != 0 {
		t.Errorf("host1 counts %d MiB after a refused start, want 0", got)
	}
	h.call("PATCH", "/v1/vms/big", sizeBody(0, "3G")).decodeOK(t, http.StatusOK, &vm)
	h.call("POST", "/v1/vms/big/start", nil).decodeOK(t, http.StatusOK, &vm)
	if got := h.allocated("host1"); got != 3072 {
		t.Errorf("host1 counts %d MiB with big running at 3G, want 3072", got)
	}
}

// A running VM keeps its size until its next start: the answer shows
// both sizes, the host counts the size set (it is held for the next
// start), and a size its host cannot take is refused at once, with the
// scheduler's reason, writing nothing.
func TestAPIResizeRunningVM(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t) // host1: 4096 MiB, 4 CPUs (16 vCPUs)
	h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny", Memory: "256M", Start: true})
	h.freeze("web1")
	h.report("web1", api.VMStatus{State: api.StateRunning, PID: 42, RunningCPUs: 1, RunningMemoryMiB: 256})
	if got := h.allocated("host1"); got != 256 {
		t.Fatalf("host1 counts %d MiB, want 256", got)
	}
	var vm api.VM
	h.call("PATCH", "/v1/vms/web1", sizeBody(2, "512M")).decodeOK(t, http.StatusOK, &vm)
	if vm.CPUs != 2 || vm.MemoryMiB != 512 || vm.RunningCPUs != 1 || vm.RunningMemoryMiB != 256 || vm.State != api.StateRunning {
		t.Errorf("answered %+v, want 2 vCPUs, 512 MiB set, running with 1, 256", vm)
	}
	if got := h.allocated("host1"); got != 512 {
		t.Errorf("host1 counts %d MiB once web1 is set to 512M, want 512", got)
	}
	h.call("GET", "/v1/vms/web1", nil).decodeOK(t, http.StatusOK, &vm)
	if vm.RunningMemoryMiB != 256 || vm.MemoryMiB != 512 {
		t.Errorf("GET shows %d MiB set, %d running", vm.MemoryMiB, vm.RunningMemoryMiB)
	}

	before := h.spec("web1")
	h.call("PATCH", "/v1/vms/web1", sizeBody(0, "5G")).wantError(t, http.StatusInsufficientStorage, "capacity",
		`vm "web1" cannot have 2 vCPUs, 5G on host host1, where it runs (4096 MiB free, needs 5120 MiB): migrate it to a host with room first, or give it less`)
	h.call("PATCH", "/v1/vms/web1", sizeBody(17, "")).wantError(t, http.StatusInsufficientStorage, "capacity",
		`vm "web1" cannot have 17 vCPUs, 512M on host host1`, "has 4 CPUs, needs 17")
	if after := h.spec("web1"); !reflect.DeepEqual(before, after) {
		t.Errorf("a refused change wrote the spec")
	}
	if got := h.allocated("host1"); got != 512 {
		t.Errorf("host1 counts %d MiB after refused changes, want 512", got)
	}
	// The room a running VM holds is what others are checked against.
	h.call("POST", "/v1/vms", api.CreateVMRequest{Name: "filler", Image: "tiny", Memory: "3712M", Start: true}).
		wantError(t, http.StatusInsufficientStorage, "capacity", "host1: 3584 MiB free, needs 3712 MiB")
	// Shrinking always fits; the host holds the size the VM runs at
	// until its next start, then the smaller one.
	h.call("PATCH", "/v1/vms/web1", sizeBody(1, "128M")).decodeOK(t, http.StatusOK, &vm)
	if got := h.allocated("host1"); got != 256 {
		t.Errorf("host1 counts %d MiB once web1, running with 256M, is set to 128M; want 256", got)
	}
	h.call("POST", "/v1/vms/web1/restart?wait=false", nil).decodeOK(t, http.StatusOK, nil)
	if got := h.allocated("host1"); got != 128 {
		t.Errorf("host1 counts %d MiB once web1 restarts with 128M, want 128", got)
	}
	if sp := h.spec("web1"); sp.StartedCPUs != 0 || sp.StartedMemoryMiB != 0 {
		t.Errorf("the restart left the started size in the spec: %d, %d", sp.StartedCPUs, sp.StartedMemoryMiB)
	}
	// A VM that stops holds nothing; started again, the size set.
	h.call("PATCH", "/v1/vms/web1", sizeBody(1, "64M")).decodeOK(t, http.StatusOK, &vm)
	h.call("POST", "/v1/vms/web1/stop?wait=false", nil).decodeOK(t, http.StatusOK, nil)
	if got := h.allocated("host1"); got != 0 {
		t.Errorf("host1 counts %d MiB with web1 stopped, want 0", got)
	}
	h.call("POST", "/v1/vms/web1/start?wait=false", nil).decodeOK(t, http.StatusOK, nil)
	if got := h.allocated("host1"); got != 64 {
		t.Errorf("host1 counts %d MiB once web1 starts with 64M, want 64", got)
	}
}

// A project's usage follows its VMs' sizes in the same transaction;
// a change past a limit is refused with the one line of a create's
// refusal, and changes nothing.
func TestAPIResizeQuota(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t, testHost("host1", 8192, 8))
	h.call("POST", "/v1/projects", api.CreateProjectRequest{Name: "q", MaxCPUs: 4, MaxMemory: "1G"}).decodeOK(t, http.StatusCreated, nil)
	for _, name := range []string{"a", "b"} {
		h.createVM(api.CreateVMRequest{Name: name, Image: "tiny", Memory: "256M", Project: "q"})
	}
	usage := func() api.Usage {
		var p api.Project
		h.call("GET", "/v1/projects/q", nil).decodeOK(t, http.StatusOK, &p)
		return p.Usage
	}
	var vm api.VM
	h.call("PATCH", "/v1/vms/a", sizeBody(3, "")).decodeOK(t, http.StatusOK, &vm)
	if u := usage(); u.CPUs != 4 || u.MemoryMiB != 512 || u.VMs != 2 {
		t.Fatalf("usage %+v after a grows to 3 vCPUs, want 4 vCPUs, 512 MiB, 2 VMs", u)
	}
	before, used := h.spec("b"), usage()
	h.call("PATCH", "/v1/vms/b", sizeBody(2, "")).wantError(t, http.StatusConflict, "conflict",
		`project "q" is at its quota: max-cpus 4 (4 used, 1 asked)`)
	h.call("PATCH", "/v1/vms/b", sizeBody(0, "1G")).wantError(t, http.StatusConflict, "conflict",
		`project "q" is at its quota: max-memory 1G (512M used, 768M asked)`)
	if after := h.spec("b"); !reflect.DeepEqual(before, after) || usage() != used {
		t.Errorf("refused changes wrote the spec or the usage: %+v", usage())
	}
	// What a shrinks frees, b may take: in one request, a smaller and a
	// larger field.
	h.call("PATCH", "/v1/vms/a", sizeBody(1, "128M")).decodeOK(t, http.StatusOK, &vm)
	h.call("PATCH", "/v1/vms/b", sizeBody(3, "896M")).decodeOK(t, http.StatusOK, &vm)
	if u := usage(); u.CPUs != 4 || u.MemoryMiB != 1024 {
		t.Fatalf("usage %+v, want 4 vCPUs, 1024 MiB", u)
	}
	// Deleting a VM takes off its size as changed.
	h.call("DELETE", "/v1/vms/b", nil).decodeOK(t, http.StatusNoContent, nil)
	if u := usage(); u != (api.Usage{VMs: 1, CPUs: 1, MemoryMiB: 128, DiskBytes: 64 << 20}) {
		t.Errorf("usage %+v after deleting b", u)
	}
}

// Changing a size is operators' and admins' right, on the VMs they
// see: a viewer is refused, a project-scoped operator changes its
// project's VMs and finds no other; each change is audited and makes a
// lifecycle event with its requestor.
func TestAPIResizeRights(t *testing.T) {
	h, tokens := newAuthHarness(t)
	dan := h.addUser("dan", api.RoleOperator, "dev")
	h.callToken(tokens["admin"], "POST", "/v1/projects", api.CreateProjectRequest{Name: "dev"}).decodeOK(t, http.StatusCreated, nil)
	h.createVM(api.CreateVMRequest{Name: "prodvm", Image: "tiny"})
	h.callToken(dan, "POST", "/v1/vms", api.CreateVMRequest{Name: "devvm", Image: "tiny"}).decodeOK(t, http.StatusCreated, nil)

	before := h.spec("prodvm")
	h.callToken(tokens["viewer"], "PATCH", "/v1/vms/prodvm", sizeBody(2, "")).
		wantError(t, http.StatusForbidden, "forbidden", "user bob (viewer) may not change VMs: it needs the operator role")
	h.callToken(dan, "PATCH", "/v1/vms/prodvm", sizeBody(2, "")).
		wantError(t, http.StatusNotFound, "not_found", `vm "prodvm" not found`)
	if after := h.spec("prodvm"); !reflect.DeepEqual(before, after) {
		t.Errorf("refused changes wrote the spec")
	}
	var vm api.VM
	h.callToken(dan, "PATCH", "/v1/vms/devvm", sizeBody(2, "")).decodeOK(t, http.StatusOK, &vm)
	h.callToken(tokens["operator"], "PATCH", "/v1/vms/prodvm", sizeBody(0, "512M")).decodeOK(t, http.StatusOK, &vm)
	if h.spec("devvm").CPUs != 2 || h.spec("prodvm").MemoryMiB != 512 {
		t.Fatalf("changes not written: %+v %+v", h.spec("devvm"), h.spec("prodvm"))
	}

	var recs []api.AuditRecord
	h.callToken(tokens["admin"], "GET", "/v1/audit?vm=prodvm", nil).decodeOK(t, http.StatusOK, &recs)
	var results []string
	for _, r := range recs {
		if r.Action == "vm.set" {
			results = append(results, r.User+" "+r.Result)
		}
	}
	if want := []string{"bob denied", "dan failed", "olga ok"}; !reflect.DeepEqual(results, want) {
		t.Errorf("audit of vm.set on prodvm: %v, want %v", results, want)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var evs []api.Event
		h.callToken(tokens["admin"], "GET", "/v1/events?vm=devvm", nil).decodeOK(t, http.StatusOK, &evs)
		found := false
		for _, e := range evs {
			found = found || e.Kind == api.EventVMChanged && e.Requestor == "dan" && e.Message == "vm devvm changed by dan"
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no vm.changed event by dan for devvm: %+v", evs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A running VM whose size was changed migrates with the size it runs
// at: its migration carries that size to the target's QEMU, and both
// hosts hold the larger of the two sizes while it moves.
func TestAPIMigrateKeepsRunningSize(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t, testHost("host1", 4096, 4), testHost("host2", 4096, 4))
	h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny", Memory: "512M", Host: "host1", Start: true})
	h.freeze("web1")
	h.report("web1", api.VMStatus{State: api.StateRunning, PID: 42, RunningCPUs: 1, RunningMemoryMiB: 512})
	var vm api.VM
	h.call("PATCH", "/v1/vms/web1", sizeBody(2, "256M")).decodeOK(t, http.StatusOK, &vm)
	h.call("POST", "/v1/vms/web1/migrate", api.MigrateRequest{To: "host2"}).decodeOK(t, http.StatusAccepted, nil)
	m := h.spec("web1").Migration
	if m == nil || m.CPUs != 1 || m.MemoryMiB != 512 {
		t.Fatalf("the migration carries %+v, want the running size 1 vCPU, 512 MiB", m)
	}
	if sp := h.spec("web1"); sp.CPUs != 2 || sp.MemoryMiB != 256 {
		t.Errorf("the size set changed: %d vCPUs, %d MiB", sp.CPUs, sp.MemoryMiB)
	}
	for _, host := range []string{"host1", "host2"} {
		if got := h.allocated(host); got != 512 {
			t.Errorf("%s counts %d MiB while web1 (set 256M, running 512M) migrates, want 512", host, got)
		}
	}
}
