package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"syscall"

	"github.com/shoalvm/shoal/internal/api"
)

// DefaultMaxImageUpload is the largest image import a server takes unless
// configured otherwise (Config.MaxImageUpload).
const DefaultMaxImageUpload = 64 << 30

// imageDirReserve is the space imports leave free on the image library's
// disk: etcd's data and the VMs' disks may be on it too.
const imageDirReserve = 1 << 30

// roomCheckEvery is how often a running upload looks at the free space
// again (other uploads may take it meanwhile).
const roomCheckEvery = 256 << 20

// diskFree returns the bytes free to this process on dir's file system
// (a test puts a stand-in).
var diskFree = func(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

func (s *Server) maxImageUpload() int64 {
	if s.cfg.MaxImageUpload > 0 {
		return s.cfg.MaxImageUpload
	}
	return DefaultMaxImageUpload
}

// imageRoom is how much more the image library may take now.
func (s *Server) imageRoom() (int64, error) {
	free, err := diskFree(s.cfg.ImageDir)
	if err != nil {
		return 0, err
	}
	return max(free-imageDirReserve, 0), nil
}

func (s *Server) uploadTooLarge() error {
	return api.Errorf(api.ErrTooLarge, "the image is larger than this server takes (%s; see --max-image-upload)", api.FormatSize(s.maxImageUpload()))
}

func (s *Server) noRoomForUpload(size int64) error {
	what := "the image"
	if size > 0 {
		what += " (" + api.FormatSize(size) + ")"
	}
	room, _ := s.imageRoom()
	return api.Errorf(api.ErrCapacity, "%s does not fit in %s: %s free beyond the %s kept free", what, s.cfg.ImageDir,
		api.FormatSize(room), api.FormatSize(imageDirReserve))
}

var errNoRoom = errors.New("no room")

// receiveImage writes the request body to a file of the image library and
// returns its path. A body over the upload limit, or larger than the room
// left, is refused before anything is written if its length is known, and
// stopped where it passes either if not; on an error no file is left.
func (s *Server) receiveImage(w http.ResponseWriter, r *http.Request) (string, error) {
	limit := s.maxImageUpload()
	if r.ContentLength > limit {
		return "", s.uploadTooLarge()
	}
	room, err := s.imageRoom()
	if err != nil {
		return "", err
	}
	if r.ContentLength > room || room == 0 {
		return "", s.noRoomForUpload(r.ContentLength)
	}
	up, err := os.CreateTemp(s.cfg.ImageDir, ".upload-")
	if err != nil {
		return "", fmt.Errorf("image upload: %w", err)
	}
	_, err = io.Copy(&roomWriter{w: up, s: s, left: room}, http.MaxBytesReader(w, r.Body, limit))
	if cerr := up.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		return up.Name(), nil
	}
	_ = os.Remove(up.Name())
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return "", s.uploadTooLarge()
	case errors.Is(err, errNoRoom):
		return "", s.noRoomForUpload(r.ContentLength)
	}
	return "", fmt.Errorf("receive image: %w", err)
}

// roomWriter fails a write that would pass the room left on the disk.
type roomWriter struct {
	w     io.Writer
	s     *Server
	left  int64 // bytes it may still write
	since int64 // written since the free space was last looked at
}

func (rw *roomWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > rw.left {
		return 0, errNoRoom
	}
	n, err := rw.w.Write(p)
	rw.left -= int64(n)
	if rw.since += int64(n); rw.since >= roomCheckEvery {
		rw.since = 0
		if room, rerr := rw.s.imageRoom(); rerr == nil {
			rw.left = min(rw.left, room)
		}
	}
	return n, err
}
