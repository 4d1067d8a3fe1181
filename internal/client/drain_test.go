package client

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

func TestClientEventsAndDrain(t *testing.T) {
	f := newFakeAPI(t)
	c := f.client(t, "tok")
	ctx := context.Background()

	f.answer(http.StatusOK, []api.Event{{ID: "1", Kind: api.EventDrainDone, Host: "host1"}})
	evs, err := c.Events(ctx, EventQuery{VM: "web 1", Host: "host1", Since: "10m", After: "0001-ab", Limit: 5})
	if err != nil || len(evs) != 1 || evs[0].Kind != api.EventDrainDone {
		t.Fatalf("Events = %+v, %v", evs, err)
	}
	if r := f.last(t); r.method != "GET" || r.path != "/v1/events" || r.rawQuery != "after=0001-ab&host=host1&limit=5&since=10m&vm=web+1" {
		t.Errorf("request %s %s?%s", r.method, r.path, r.rawQuery)
	}
	if _, err := c.Events(ctx, EventQuery{}); err != nil || f.last(t).rawQuery != "" {
		t.Errorf("no filter: %v, query %q", err, f.last(t).rawQuery)
	}

	f.answer(http.StatusAccepted, api.DrainReport{ID: "d1", Host: "host1", State: api.DrainRunning})
	rep, err := c.DrainHost(ctx, "host1", api.DrainRequest{Parallel: 3, MigrationOptions: api.MigrationOptions{Insecure: true}})
	if err != nil || rep.ID != "d1" {
		t.Fatalf("DrainHost = %+v, %v", rep, err)
	}
	r := f.last(t)
	var sent api.DrainRequest
	if err := json.Unmarshal(r.body, &sent); err != nil || r.method != "POST" || r.path != "/v1/hosts/host1/drain" || sent.Parallel != 3 || !sent.Insecure {
		t.Errorf("request %s %s %s", r.method, r.path, r.body)
	}
	f.answer(http.StatusOK, api.DrainReport{ID: "d1"})
	if _, err := c.Drain(ctx, "host1"); err != nil || f.last(t).method != "GET" || f.last(t).path != "/v1/hosts/host1/drain" {
		t.Errorf("Drain: %v %+v", err, f.last(t))
	}
	f.answer(http.StatusOK, api.Host{Name: "host1", State: api.HostUp})
	if h, err := c.ResumeHost(ctx, "host1"); err != nil || h.State != api.HostUp || f.last(t).path != "/v1/hosts/host1/resume" {
		t.Errorf("ResumeHost = %+v, %v", h, err)
	}
	f.answer(http.StatusConflict, api.ErrorBody{Error: "host host1 is not in maintenance", Kind: "conflict"})
	if _, err := c.ResumeHost(ctx, "host1"); err == nil || err.Error() != "host host1 is not in maintenance" {
		t.Errorf("409: %v", err)
	}
}
