package client

import (
	"context"
	"net/http"
	"reflect"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

// TestProjectCalls: each project method calls its route, with the name
// path-escaped, and reads the answer.
func TestProjectCalls(t *testing.T) {
	f := newFakeAPI(t)
	c := f.client(t, "tok-2")
	ctx := context.Background()
	want := api.Project{Name: "dev", Limits: api.Limits{VMs: 10}, Usage: api.Usage{VMs: 2, CPUs: 2}}

	f.answer(http.StatusCreated, want)
	got, err := c.CreateProject(ctx, api.CreateProjectRequest{Name: "dev", MaxVMs: 10, MaxMemory: "16G"})
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("CreateProject = %+v, %v", got, err)
	}
	if r := f.last(t); r.method != "POST" || r.path != "/v1/projects" || string(r.body) != `{"name":"dev","max_vms":10,"max_memory":"16G"}` {
		t.Errorf("CreateProject sent %s %s %s", r.method, r.path, r.body)
	}
	f.answer(http.StatusOK, want)
	if got, err = c.GetProject(ctx, "../vms"); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("GetProject = %+v, %v", got, err)
	}
	if r := f.last(t); r.method != "GET" || r.path != "/v1/projects/..%2Fvms" {
		t.Errorf("GetProject sent %s %s", r.method, r.path)
	}
	f.answer(http.StatusOK, []api.Project{want})
	if list, err := c.ListProjects(ctx); err != nil || len(list) != 1 || !reflect.DeepEqual(list[0], want) {
		t.Fatalf("ListProjects = %+v, %v", list, err)
	}
	f.answer(http.StatusNoContent, "")
	if err := c.DeleteProject(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	if r := f.last(t); r.method != "DELETE" || r.path != "/v1/projects/dev" {
		t.Errorf("DeleteProject sent %s %s", r.method, r.path)
	}
}
