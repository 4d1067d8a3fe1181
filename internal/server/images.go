package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/audit"
	"github.com/shoalvm/shoal/internal/image"
	"github.com/shoalvm/shoal/internal/storage"
)

// CleanImageDir removes half-made uploads and imports left by a crash.
func CleanImageDir(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			_ = os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) error {
	ims, err := s.st.ListImages(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ims)
	return nil
}

// BuildTinyImage builds the tiny image into the library (if it is missing
// or stale) and records it.
func BuildTinyImage(ctx context.Context, s *Server) (api.Image, error) {
	art, err := image.BuildTiny(ctx, s.log, filepath.Join(s.cfg.ImageDir, "tiny"), image.TinyOptions{})
	if err != nil {
		return api.Image{}, err
	}
	size, err := storage.VirtualSize(ctx, art.Disk)
	if err != nil {
		return api.Image{}, err
	}
	im := api.Image{Name: "tiny", Format: "qcow2", Source: "built: tiny (Debian cloud kernel + busybox)",
		SizeBytes: size, Kernel: true, Cmdline: art.Cmdline, CreatedAt: time.Now().UTC()}
	if old, err := s.st.GetImage(ctx, "tiny"); err == nil {
		im.CreatedAt = old.CreatedAt
	}
	return im, s.st.PutImage(ctx, im)
}

func (s *Server) buildImage(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Name string `json:"name"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	audit.SetObject(r.Context(), "image/"+req.Name)
	if req.Name != "tiny" {
		return api.Errorf(api.ErrInvalid, "cannot build image %q: only 'tiny' can be built; import others with 'shoal image import'", req.Name)
	}
	im, err := BuildTinyImage(r.Context(), s)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, im)
	return nil
}

// importImage takes a disk image (qcow2, raw, vmdk, vhdx, vdi) as the
// request body and converts it into a qcow2 image of the library.
func (s *Server) importImage(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	name := r.PathValue("name")
	if err := api.ValidateName("image", name); err != nil {
		return err
	}
	if _, err := s.st.GetImage(ctx, name); err == nil {
		return api.Errorf(api.ErrConflict, "image %q already exists", name)
	}
	if err := os.MkdirAll(s.cfg.ImageDir, 0o750); err != nil {
		return fmt.Errorf("image dir: %w", err)
	}
	up, err := s.receiveImage(w, r)
	if err != nil {
		return err
	}
	defer os.Remove(up)
	stage, err := os.MkdirTemp(s.cfg.ImageDir, ".import-")
	if err != nil {
		return fmt.Errorf("image import: %w", err)
	}
	defer os.RemoveAll(stage)
	room, err := s.imageRoom()
	if err != nil {
		return err
	}
	format, err := image.Import(ctx, up, filepath.Join(stage, "disk.qcow2"), room)
	if errors.Is(err, image.ErrNotDiskImage) || errors.Is(err, image.ErrUnsupportedFormat) {
		return api.Errorf(api.ErrInvalid, "cannot import %q: %v", name, err)
	}
	if errors.Is(err, image.ErrNoRoom) {
		return api.Errorf(api.ErrCapacity, "cannot import %q: the converted image does not fit in %s: %v", name, s.cfg.ImageDir, err)
	}
	if err != nil {
		return fmt.Errorf("import %q: %w", name, err)
	}
	size, err := storage.VirtualSize(ctx, filepath.Join(stage, "disk.qcow2"))
	if err != nil {
		return err
	}
	im := api.Image{Name: name, Format: "qcow2", Source: "imported: " + format, SizeBytes: size, CreatedAt: time.Now().UTC()}
	if err := image.WriteStamp(stage, im); err != nil {
		return err
	}
	dst := filepath.Join(s.cfg.ImageDir, name)
	if err := os.Rename(stage, dst); err != nil { // fails if another import of this name won
		return api.Errorf(api.ErrConflict, "image %q already exists", name)
	}
	if err := s.st.CreateImage(ctx, im); err != nil {
		_ = os.RemoveAll(dst)
		return err
	}
	s.log.Info("image imported", "name", name, "from", format, "size", size)
	writeJSON(w, http.StatusCreated, im)
	return nil
}

func (s *Server) deleteImage(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	name := r.PathValue("name")
	if _, err := s.st.GetImage(ctx, name); err != nil {
		return notFoundHint(err, "see 'shoal image list'")
	}
	specs, _, err := s.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	for _, v := range specs {
		if v.Image == name {
			return api.Errorf(api.ErrConflict, "image %q is used by vm %q: delete the VM first", name, v.Name)
		}
	}
	if err := s.st.DeleteImage(ctx, name); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(s.cfg.ImageDir, name)); err != nil {
		return fmt.Errorf("remove image files: %w", err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
