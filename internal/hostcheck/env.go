package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"

	"golang.org/x/sys/unix"
)

// Env is everything the checks look at. Tests fill it with fakes; RealEnv
// returns the real machine.
type Env struct {
	// LookPath finds an executable like exec.LookPath.
	LookPath func(file string) (string, error)
	// Output runs a command and returns its combined output.
	Output func(ctx context.Context, name string, args ...string) ([]byte, error)
	// Stat is os.Stat.
	Stat func(path string) (fs.FileInfo, error)
	// OpenRW opens path read-write and closes it again, reporting why it
	// could not.
	OpenRW func(path string) error
	// ReadFile is os.ReadFile (used for /proc and /lib/modules).
	ReadFile func(path string) ([]byte, error)
	// Geteuid is os.Geteuid.
	Geteuid func() int
	// FreeDisk returns the bytes available to unprivileged users on the
	// file system holding path.
	FreeDisk func(path string) (uint64, error)
}

// RealEnv returns an Env backed by the real machine.
func RealEnv() Env {
	return Env{
		LookPath: exec.LookPath,
		Output: func(ctx context.Context, name string, args ...string) ([]byte, error) {
			return exec.CommandContext(ctx, name, args...).CombinedOutput()
		},
		Stat:     os.Stat,
		OpenRW:   openRW,
		ReadFile: os.ReadFile,
		Geteuid:  os.Geteuid,
		FreeDisk: freeDisk,
	}
}

func (e Env) withDefaults() Env {
	r := RealEnv()
	if e.LookPath == nil {
		e.LookPath = r.LookPath
	}
	if e.Output == nil {
		e.Output = r.Output
	}
	if e.Stat == nil {
		e.Stat = r.Stat
	}
	if e.OpenRW == nil {
		e.OpenRW = r.OpenRW
	}
	if e.ReadFile == nil {
		e.ReadFile = r.ReadFile
	}
	if e.Geteuid == nil {
		e.Geteuid = r.Geteuid
	}
	if e.FreeDisk == nil {
		e.FreeDisk = r.FreeDisk
	}
	return e
}

func openRW(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}

func freeDisk(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, &fs.PathError{Op: "statfs", Path: path, Err: err}
	}
	if st.Bsize <= 0 {
		return 0, errors.New("statfs: bad block size")
	}
	return st.Bavail * uint64(st.Bsize), nil
}
