package server

import "testing"

// A stray closing bracket after the object is malformed JSON.
func TestAPITrailingGarbageAfterBody(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	for _, body := range []string{`{"name": "a", "image": "tiny"}}`, `{"name": "a", "image": "tiny"}]`} {
		h.call("POST", "/v1/vms?timeout=5s", body).wantError(t, 400, "invalid", "trailing data")
	}
	if n := h.vmCount(); n != 0 {
		t.Fatalf("%d VMs created from malformed bodies", n)
	}
}
