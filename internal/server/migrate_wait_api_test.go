package server

import (
	"net/http"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// callHeader sends an authenticated GET with If-None-Match: etag.
func (h *apiHarness) callHeader(path, etag string) apiResp {
	h.t.Helper()
	req, err := http.NewRequest("GET", h.url+path, nil)
	must(h.t, err)
	req.Header.Set("Authorization", "Bearer "+apiTestToken)
	req.Header.Set("If-None-Match", etag)
	return h.do(req)
}

// A GET of a migration with its ETag waits for a change: a client
// follows the migration without polling.
func TestAPIMigrationWaitsForChange(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t, testHost("host1", 4096, 4), testHost("host2", 4096, 4))
	h.startControllers()
	h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny", Host: "host1", Start: true})
	h.call("POST", "/v1/vms/web1/migrate", api.MigrateRequest{}).decodeOK(t, http.StatusAccepted, nil)

	first := h.call("GET", "/v1/vms/web1/migration", nil)
	var rec api.MigrationRecord
	first.decodeOK(t, http.StatusOK, &rec)
	tag := first.hdr.Get("ETag")
	if tag == "" || rec.Result != api.MigrationRunning {
		t.Fatalf("first look: ETag %q, record %+v", tag, rec)
	}

	// Nothing changes (the target never answers): 304 once the wait ends.
	start := time.Now()
	if r := h.callHeader("/v1/vms/web1/migration?timeout=300ms", tag); r.code != http.StatusNotModified || r.hdr.Get("ETag") != tag {
		t.Fatalf("unchanged: status %d ETag %q, want 304 %q", r.code, r.hdr.Get("ETag"), tag)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
		t.Errorf("the unchanged wait took %s, want about 300ms", d)
	}

	// A cancel is seen at once by a client waiting up to 20 s.
	go func() {
		time.Sleep(300 * time.Millisecond)
		h.call("DELETE", "/v1/vms/web1/migration", nil)
	}()
	start = time.Now()
	r := h.callHeader("/v1/vms/web1/migration?timeout=20s", tag)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the change came back after %s", d)
	}
	r.decodeOK(t, http.StatusOK, &rec)
	if rec.Result != api.MigrationCancelled || r.hdr.Get("ETag") == tag {
		t.Errorf("after the cancel: ETag %q (was %q), record %+v", r.hdr.Get("ETag"), tag, rec)
	}

	h.call("GET", "/v1/vms/web1/migration?timeout=soon", nil).decodeOK(t, http.StatusOK, nil) // no If-None-Match: no wait, timeout unread
	h.callHeader("/v1/vms/web1/migration?timeout=soon", tag).wantError(t, 400, "invalid", `timeout "soon"`)
	h.callHeader("/v1/vms/nope/migration", tag).wantError(t, 404, "not_found", "nope")
}
