package server

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

// upload PUTs an image of size bytes: with its length, or streamed
// without one (as the CLI sends a file).
func (h *apiHarness) upload(name string, size int, withLength bool) apiResp {
	h.t.Helper()
	data := make([]byte, size)
	copy(data, "shoal upload test")
	var body io.Reader = bytes.NewReader(data)
	if !withLength {
		body = io.MultiReader(body) // hides the length: sent chunked
	}
	req, err := http.NewRequest("PUT", h.url+"/v1/images/"+name, body)
	must(h.t, err)
	req.Header.Set("Authorization", "Bearer "+apiTestToken)
	return h.do(req)
}

// imageDirLeft lists what the image library holds.
func (h *apiHarness) imageDirLeft() []string {
	h.t.Helper()
	ents, _ := os.ReadDir(h.srv.cfg.ImageDir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func (h *apiHarness) noImage(name string) {
	h.t.Helper()
	var ims []api.Image
	h.call("GET", "/v1/images", nil).decodeOK(h.t, 200, &ims)
	for _, im := range ims {
		if im.Name == name {
			h.t.Fatalf("image %q was made: %+v", name, im)
		}
	}
}

func TestImageUploadOverTheLimitIsRefused(t *testing.T) {
	h := newAPIHarness(t)
	h.srv.cfg.MaxImageUpload = 1 << 20
	for _, withLength := range []bool{true, false} {
		h.upload("big", 2<<20, withLength).wantError(t, http.StatusRequestEntityTooLarge, "too_large",
			"larger than this server takes (1M; see --max-image-upload)")
		if left := h.imageDirLeft(); len(left) != 0 {
			t.Fatalf("a refused upload (length sent: %v) left %v", withLength, left)
		}
		h.noImage("big")
	}
}

func TestImageUploadThatDoesNotFitIsRefused(t *testing.T) {
	h := newAPIHarness(t)
	old := diskFree
	t.Cleanup(func() { diskFree = old })
	diskFree = func(string) (int64, error) { return imageDirReserve + 512<<10, nil }
	for _, withLength := range []bool{true, false} {
		h.upload("big", 1<<20, withLength).wantError(t, http.StatusInsufficientStorage, "capacity",
			"does not fit in "+h.srv.cfg.ImageDir, "512K free beyond the 1G kept free")
		if left := h.imageDirLeft(); len(left) != 0 {
			t.Fatalf("a refused upload (length sent: %v) left %v", withLength, left)
		}
		h.noImage("big")
	}
}

// Within the limit and the room, an upload imports.
func TestImageUploadWithinBoundsImports(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img is needed: apt-get install qemu-utils")
	}
	h := newAPIHarness(t)
	h.srv.cfg.MaxImageUpload = 1 << 20
	var im api.Image
	h.upload("small", 1<<20, false).decodeOK(t, http.StatusCreated, &im)
	if im.SizeBytes != 1<<20 || im.Source != "imported: raw" {
		t.Fatalf("imported %+v", im)
	}
	if _, err := os.Stat(filepath.Join(h.srv.cfg.ImageDir, "small", "disk.qcow2")); err != nil {
		t.Fatal(err)
	}
	if left := h.imageDirLeft(); len(left) != 1 {
		t.Fatalf("image library holds %v, want the image only", left)
	}
}
