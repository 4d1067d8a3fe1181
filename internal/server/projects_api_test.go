package server

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

// TestProjectScopedUser: an operator of project dev creates into dev,
// sees only dev's VMs, and to it another project's VM does not exist.
func TestProjectScopedUser(t *testing.T) {
	h, tokens := newAuthHarness(t)
	admin := tokens["admin"]
	dan := h.addUser("dan", api.RoleOperator, "dev")
	h.callToken(dan, "POST", "/v1/projects", api.CreateProjectRequest{Name: "dev"}).
		wantError(t, http.StatusForbidden, "forbidden", "user dan (operator) may not create projects: it needs the admin role")
	h.callToken(admin, "POST", "/v1/projects", api.CreateProjectRequest{Name: "dev", MaxVMs: 10, MaxMemory: "16G"}).decodeOK(t, http.StatusCreated, nil)
	h.callToken(admin, "POST", "/v1/projects", api.CreateProjectRequest{Name: "default"}).wantError(t, http.StatusConflict, "conflict", "always exists")

	var vm api.VM
	h.callToken(admin, "POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: "prodvm", Image: "tiny", Memory: "64M"}).decodeOK(t, http.StatusCreated, &vm)
	if vm.Project != api.DefaultProject {
		t.Errorf("admin's VM is in project %q, want default", vm.Project)
	}
	h.callToken(dan, "POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: "devvm", Image: "tiny", Memory: "64M"}).decodeOK(t, http.StatusCreated, &vm)
	if vm.Project != "dev" {
		t.Errorf("dan's VM is in project %q, want dev", vm.Project)
	}
	h.callToken(dan, "POST", "/v1/vms", api.CreateVMRequest{Name: "sneaky", Image: "tiny", Project: "default"}).
		wantError(t, http.StatusForbidden, "forbidden", "user dan (operator) of project dev may not create VMs in project default")

	names := func(token string) string {
		var vms []api.VM
		h.callToken(token, "GET", "/v1/vms", nil).decodeOK(t, http.StatusOK, &vms)
		var out []string
		for _, v := range vms {
			out = append(out, v.Name+"@"+v.Project)
		}
		return strings.Join(out, " ")
	}
	if got := names(dan); got != "devvm@dev" {
		t.Errorf("dan lists %q, want devvm@dev only", got)
	}
	if got := names(admin); got != "devvm@dev prodvm@default" {
		t.Errorf("admin lists %q", got)
	}
	// Hidden as a missing VM is: the same answer, word for word.
	missing := h.callToken(dan, "GET", "/v1/vms/nosuch", nil).wantError(t, http.StatusNotFound, "not_found")
	hidden := h.callToken(dan, "GET", "/v1/vms/prodvm", nil).wantError(t, http.StatusNotFound, "not_found", `vm "prodvm" not found: see 'shoal vm list'`)
	if strings.ReplaceAll(missing.Error, "nosuch", "prodvm") != hidden.Error {
		t.Errorf("a hidden VM answers %q, a missing one %q", hidden.Error, missing.Error)
	}
	h.callToken(dan, "POST", "/v1/vms/prodvm/stop", nil).wantError(t, http.StatusNotFound, "not_found")
	h.callToken(dan, "DELETE", "/v1/vms/prodvm", nil).wantError(t, http.StatusNotFound, "not_found")
	h.callToken(dan, "GET", "/v1/vms/devvm", nil).decodeOK(t, http.StatusOK, &vm)
	// Events: dan's VM's, not the other's.
	eventVMs := func(token string) map[string]bool {
		var evs []api.Event
		h.callToken(token, "GET", "/v1/events", nil).decodeOK(t, http.StatusOK, &evs)
		seen := map[string]bool{}
		for _, ev := range evs {
			seen[ev.VM] = true
		}
		return seen
	}
	if all := eventVMs(admin); !all["prodvm"] || !all["devvm"] {
		t.Errorf("admin's events are of %v, want prodvm and devvm", all)
	}
	if seen := eventVMs(dan); seen["prodvm"] || !seen["devvm"] {
		t.Errorf("dan's events are of %v, want devvm's only", seen)
	}
	// A page of dan's events is filled with his project's, however many
	// newer ones of other projects there are.
	for _, act := range []string{"stop", "start", "stop", "start"} {
		h.callToken(admin, "POST", "/v1/vms/prodvm/"+act+"?wait=false", nil)
	}
	var page []api.Event
	h.callToken(dan, "GET", "/v1/events?limit=1", nil).decodeOK(t, http.StatusOK, &page)
	if len(page) != 1 || page[0].VM != "devvm" {
		t.Errorf("dan's page of one event: %+v, want devvm's newest", page)
	}

	var ps []api.Project
	h.callToken(dan, "GET", "/v1/projects", nil).decodeOK(t, http.StatusOK, &ps)
	if len(ps) != 1 || ps[0].Name != "dev" || ps[0].Usage.VMs != 1 || ps[0].Limits.VMs != 10 || ps[0].Limits.MemoryMiB != 16<<10 {
		t.Errorf("dan's projects: %+v", ps)
	}
	h.callToken(dan, "GET", "/v1/projects/default", nil).wantError(t, http.StatusNotFound, "not_found", `project "default" not found`)
	h.callToken(admin, "GET", "/v1/projects", nil).decodeOK(t, http.StatusOK, &ps)
	if len(ps) != 2 || ps[0].Name != "default" || ps[0].Usage != (api.Usage{VMs: 1, CPUs: 1, MemoryMiB: 64, DiskBytes: 64 << 20}) {
		t.Errorf("admin's projects: %+v", ps)
	}
	h.callToken(admin, "DELETE", "/v1/projects/dev", nil).wantError(t, http.StatusConflict, "conflict", `project "dev" has 1 VMs: delete them first`)
	h.callToken(dan, "DELETE", "/v1/vms/devvm", nil).decodeOK(t, http.StatusNoContent, nil)
	h.callToken(admin, "DELETE", "/v1/projects/dev", nil).decodeOK(t, http.StatusNoContent, nil)
	h.callToken(admin, "GET", "/v1/projects/dev", nil).wantError(t, http.StatusNotFound, "not_found", `project "dev" not found`)
}

// TestProjectQuotaAPI: 20 creates at once into a project of at most 5
// VMs: exactly 5 are created, the others refused (409, one line naming
// the limit), and the project's VMs are those 5; the next create is
// refused and changes nothing.
func TestProjectQuotaAPI(t *testing.T) {
	h := newAPIHarness(t, testHost("host1", 8192, 64), testHost("host2", 8192, 64))
	h.call("POST", "/v1/projects", api.CreateProjectRequest{Name: "q", MaxVMs: 5}).decodeOK(t, http.StatusCreated, nil)
	h.call("POST", "/v1/projects", api.CreateProjectRequest{Name: "bad", MaxMemory: "lots"}).wantError(t, http.StatusBadRequest, "invalid", "max-memory")
	var wg sync.WaitGroup
	resps := make([]apiResp, 20)
	for i := range resps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resps[i] = h.call("POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: fmt.Sprintf("q%02d", i), Image: "tiny", Memory: "32M", Project: "q"})
		}()
	}
	wg.Wait()
	created := 0
	for _, r := range resps {
		switch r.code {
		case http.StatusCreated:
			created++
		default:
			r.wantError(t, http.StatusConflict, "conflict", `project "q" is at its quota: max-vms 5 (5 used)`)
		}
	}
	list := func() []api.VM {
		var vms []api.VM
		h.call("GET", "/v1/vms", nil).decodeOK(t, http.StatusOK, &vms)
		return vms
	}
	if n := len(list()); created != 5 || n != 5 {
		t.Fatalf("%d created, %d listed; want 5", created, n)
	}
	h.call("POST", "/v1/vms", api.CreateVMRequest{Name: "one-more", Image: "tiny", Memory: "32M", Project: "q"}).
		wantError(t, http.StatusConflict, "conflict", "max-vms 5 (5 used)")
	if n := len(list()); n != 5 {
		t.Errorf("a refused create changed the list: %d VMs", n)
	}
	var p api.Project
	h.call("GET", "/v1/projects/q", nil).decodeOK(t, http.StatusOK, &p)
	if p.Usage.VMs != 5 || p.Usage.MemoryMiB != 5*32 {
		t.Errorf("usage %+v", p.Usage)
	}
	h.call("POST", "/v1/vms", api.CreateVMRequest{Name: "lost", Image: "tiny", Project: "nosuch"}).
		wantError(t, http.StatusNotFound, "not_found", `project "nosuch" not found: see 'shoal project list'`)
}
