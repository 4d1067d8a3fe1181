package qemu

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// A guest writes to its serial console as fast as it likes, and QEMU
// appends all of it to console.log. So that a guest cannot fill the
// host's disk, the agent caps the file (CapLog, every few seconds, also
// for VMs it reattached to): once console.log is over ConsoleLogMax its
// last ConsoleLogMax bytes become console.log.1 (replacing the one
// before) and console.log is emptied in place. On disk a VM's console
// thus takes at most about 2 x ConsoleLogMax plus what the guest writes
// between two checks. Whatever reads the logs reads at most their tails.
const (
	ConsoleLogMax = 1 << 20  // console.log (and console.log.1) at most
	LogTail       = 64 << 10 // what the agent reads of a log, at most
)

// ConsoleLogOld is where the console's older output is kept.
const ConsoleLogOld = ConsoleLog + ".1"

// CapLog moves a log that has grown over limit to path.1 (its last limit
// bytes) and empties it in place; it reports whether it did. The file
// must be one its writer opened with O_APPEND, as QEMU does a chardev's
// log with logappend=on: the writer's next write then lands at the new
// end. Renaming it away instead would leave the writer on the old inode,
// growing on unseen. What the writer adds between the copy and the
// truncation is lost: a moment's worth of output.
func CapLog(path string, limit int64) (bool, error) {
	f, err := openOwn(path, os.O_RDWR)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, err
	}
	if st.Size() <= limit {
		return false, nil
	}
	old := path + ".1"
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(old)+".tmp")
	if err != nil {
		return false, fmt.Errorf("rotate %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, io.NewSectionReader(f, st.Size()-limit, limit))
	if err == nil {
		// By the open file, never by its name: the VM's QEMU user owns
		// the dir and could put a link there meanwhile.
		err = tmp.Chmod(st.Mode().Perm() & 0o640)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), old)
	}
	if err == nil {
		err = f.Truncate(0) // the file checked, not whatever the name points to now
	}
	if err != nil {
		return false, fmt.Errorf("rotate %s: %w", path, err)
	}
	return true, nil
}

// ReadTail returns the last n bytes of the files one after the other
// (missing ones count as empty), reading no more than that.
func ReadTail(n int64, paths ...string) []byte {
	var out []byte
	for i := len(paths) - 1; i >= 0 && int64(len(out)) < n; i-- {
		f, err := openOwn(paths[i], os.O_RDONLY)
		if err != nil {
			continue
		}
		if st, err := f.Stat(); err == nil {
			want := min(n-int64(len(out)), st.Size())
			b := make([]byte, want)
			k, _ := f.ReadAt(b, st.Size()-want)
			out = append(b[:k], out...)
		}
		f.Close()
	}
	return out
}

// ConsoleTail returns the last n bytes the guest of dir wrote to its
// serial console.
func ConsoleTail(dir string, n int64) []byte {
	return ReadTail(n, filepath.Join(dir, ConsoleLogOld), filepath.Join(dir, ConsoleLog))
}

// OpenConsoleLog opens what the console log of dir holds: console.log.1
// then console.log, each as long as it was when opened (so the reader
// ends even while the guest writes). os.ErrNotExist if the VM never ran.
func OpenConsoleLog(dir string) (io.ReadCloser, error) {
	cur, err := openOwn(filepath.Join(dir, ConsoleLog), os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	files := []*os.File{cur}
	if old, err := openOwn(filepath.Join(dir, ConsoleLogOld), os.O_RDONLY); err == nil {
		files = []*os.File{old, cur}
	}
	rs := make([]io.Reader, 0, len(files))
	for _, f := range files {
		st, err := f.Stat()
		if err != nil {
			closeAll(files)
			return nil, err
		}
		rs = append(rs, io.NewSectionReader(f, 0, st.Size()))
	}
	return &multiFile{Reader: io.MultiReader(rs...), files: files}, nil
}

type multiFile struct {
	io.Reader
	files []*os.File
}

func (m *multiFile) Close() error { closeAll(m.files); return nil }

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// openOwn opens a file of a VM's dir, which belongs to the VM's (maybe
// compromised) QEMU user: never through a link put at its name, never a
// FIFO or device, so that the agent, as root, reads, copies or truncates
// only that file and nothing of the host's.
func openOwn(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", path)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
