package image

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// StampFile, in a directory that holds a copy of an image's files (a
// server's library, a host's cache, a shared pool's base), names the
// image the copy is of. An image deleted and imported again under its
// name is another image: a copy of the old one must not stand for it.
const StampFile = "origin"

// Stamp tells im apart from every other image that had its name: its
// creation time.
func Stamp(im api.Image) string { return im.CreatedAt.UTC().Format(time.RFC3339Nano) }

// Version is Stamp in a form fit for a directory name.
func Version(im api.Image) string { return im.CreatedAt.UTC().Format("20060102T150405.000000000Z") }

// WriteStamp records in dir that its files are im's.
func WriteStamp(dir string, im api.Image) error {
	if err := os.WriteFile(filepath.Join(dir, StampFile), []byte(Stamp(im)), 0o640); err != nil {
		return fmt.Errorf("image %s: %w", im.Name, err)
	}
	return nil
}

// ReadStamp returns the stamp recorded in dir ("" if none).
func ReadStamp(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, StampFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Matches reports whether a copy stamped s is of im. A copy without a
// stamp (made before stamps) counts as im's.
func Matches(s string, im api.Image) bool { return s == "" || s == Stamp(im) }

// Stale reports whether dir holds the files of another image than im
// under its name.
func Stale(dir string, im api.Image) bool { return !Matches(ReadStamp(dir), im) }
