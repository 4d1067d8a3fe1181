// Package atomicfile replaces files whole: a crash leaves the old file or
// the new one, never a part, and no link at the name is followed (the
// new file is made with O_EXCL beside it, then renamed over it), which
// matters in a dir another user may write, such as a VM's.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces the file at path with b, mode perm, synced to disk with
// its directory.
func Write(path string, b []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // nothing is left once renamed
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(perm) // by the file, not its name
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err == nil {
		if d, derr := os.Open(filepath.Dir(path)); derr == nil {
			err = d.Sync()
			d.Close()
		}
	}
	return err
}
