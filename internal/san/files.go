package san

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool"
)

// A volume's backing file is <dir>/vol-<id>.img, a sparse raw file. It is
// made under a temporary name, <dir>/.vol-<id>.img.tmp, and renamed into
// place whole, so that a crash leaves either no file or a complete one;
// temporary files are removed at the next Rebuild.

const (
	filePrefix = "vol-"
	fileSuffix = ".img"
	tmpPrefix  = ".vol-"
	tmpSuffix  = ".img.tmp"
)

// checkID refuses ids that are not 1-64 lower-case hex digits (ids name
// files and targets).
func checkID(id string) error {
	if id == "" || len(id) > 64 {
		return api.Errorf(api.ErrInvalid, "volume id %q must be 1-64 hex digits", id)
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return api.Errorf(api.ErrInvalid, "volume id %q must be 1-64 hex digits", id)
		}
	}
	return nil
}

// checkSize refuses sizes that a LUN of 512-byte blocks cannot have.
func checkSize(size int64) error {
	if size <= 0 || size%512 != 0 {
		return api.Errorf(api.ErrInvalid, "volume size %d is not a positive multiple of 512 bytes", size)
	}
	return nil
}

func (s *SAN) file(id string) string { return filepath.Join(s.cfg.Dir, filePrefix+id+fileSuffix) }
func (s *SAN) tmp(id string) string  { return filepath.Join(s.cfg.Dir, tmpPrefix+id+tmpSuffix) }

// idOfFile returns the id a backing file's name holds, or "" for any
// other name.
func idOfFile(name string) string {
	id, ok := strings.CutPrefix(name, filePrefix)
	if !ok {
		return ""
	}
	id, ok = strings.CutSuffix(id, fileSuffix)
	if !ok || checkID(id) != nil {
		return ""
	}
	return id
}

// Volumes lists the volumes whose backing files are in the pool's dir.
func (s *SAN) Volumes(ctx context.Context) ([]pool.Volume, error) {
	ents, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("san: list %s: %w", s.cfg.Dir, err)
	}
	var out []pool.Volume
	for _, e := range ents {
		id := idOfFile(e.Name())
		if id == "" || !e.Type().IsRegular() {
			continue
		}
		st, err := os.Stat(filepath.Join(s.cfg.Dir, e.Name()))
		if err != nil {
			continue // deleted meanwhile
		}
		out = append(out, pool.Volume{ID: id, SizeBytes: st.Size()})
	}
	return out, nil
}

// removeTemps removes the temporary files a crash left.
func (s *SAN) removeTemps() error {
	ents, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return fmt.Errorf("san: list %s: %w", s.cfg.Dir, err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) && strings.HasSuffix(e.Name(), tmpSuffix) {
			if err := os.Remove(filepath.Join(s.cfg.Dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("san: remove %s: %w", e.Name(), err)
			}
			s.cfg.Log.Info("removed a half-made volume file", "file", e.Name())
		}
	}
	return nil
}

// capacity is the pool's space. Volumes are sparse, but their space is
// promised: a volume's size counts as used from its creation, so that a
// guest never meets a full disk underneath. Free is the filesystem's
// free space less what existing volumes may still claim (their size
// beyond the blocks they already hold).
func (s *SAN) capacity() (pool.Capacity, error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(s.cfg.Dir, &fs); err != nil {
		return pool.Capacity{}, fmt.Errorf("san: statfs %s: %w", s.cfg.Dir, err)
	}
	total := int64(fs.Blocks) * fs.Frsize
	free := int64(fs.Bavail) * fs.Frsize
	ents, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return pool.Capacity{}, fmt.Errorf("san: list %s: %w", s.cfg.Dir, err)
	}
	for _, e := range ents {
		if idOfFile(e.Name()) == "" {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(s.cfg.Dir, e.Name()), &st); err != nil {
			continue
		}
		if claim := st.Size - st.Blocks*512; claim > 0 {
			free -= claim
		}
	}
	free = max(free, 0)
	return pool.Capacity{SizeBytes: total, UsedBytes: max(total-free, 0), FreeBytes: free}, nil
}

// fits fails with api.ErrCapacity, naming the free space, when need
// bytes more do not fit.
func (s *SAN) fits(need int64, what string) error {
	c, err := s.capacity()
	if err != nil {
		return err
	}
	if need > c.FreeBytes {
		return api.Errorf(api.ErrCapacity, "%s needs %s but the SAN pool has %s free (of %s)",
			what, api.FormatSize(need), api.FormatSize(c.FreeBytes), api.FormatSize(c.SizeBytes))
	}
	return nil
}

// makeFile makes v's backing file under its temporary name and renames
// it into place: blank, or with base's contents (a qcow2 image
// converted to raw, then grown to v's size).
func (s *SAN) makeFile(ctx context.Context, v pool.Volume) error {
	tmp := s.tmp(v.ID)
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("san: %w", err)
	}
	if v.Base != "" {
		vsize, err := imageSize(ctx, v.Base)
		if err != nil {
			return err
		}
		if vsize > v.SizeBytes {
			return api.Errorf(api.ErrInvalid, "volume size %s is smaller than its image's %s",
				api.FormatSize(v.SizeBytes), api.FormatSize(vsize))
		}
		out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", v.Base, tmp).CombinedOutput()
		if err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("san: convert %s: %v: %s", v.Base, err, strings.TrimSpace(string(out)))
		}
	}
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE, 0o600)
	if err == nil {
		err = f.Truncate(v.SizeBytes)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, s.file(v.ID))
	}
	if err == nil {
		err = syncDir(s.cfg.Dir)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("san: make volume file: %w", err)
	}
	return nil
}

// imageSize is the virtual size of a qcow2 image.
func imageSize(ctx context.Context, path string) (int64, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-f", "qcow2", "--output=json", path).Output()
	if err != nil {
		return 0, api.Errorf(api.ErrInvalid, "base image %s: %v", path, err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("san: qemu-img info %s: %w", path, err)
	}
	return info.VirtualSize, nil
}

// truncateFile sets path's size and syncs it.
func truncateFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("san: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("san: grow %s: %w", path, err)
	}
	return f.Sync()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
