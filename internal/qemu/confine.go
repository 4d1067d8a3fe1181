package qemu

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// User is the unprivileged user a VM's QEMU runs as. Launch gives it the
// VM's state directory; every other file QEMU opens by path (disks, the
// seed, the kernel) must be readable (writable, for disks) by it, and
// the directories above them searchable. Taps come as open descriptors.
type User struct {
	UID, GID int
	Groups   []int // supplementary groups, e.g. kvm's for /dev/kvm
}

// sandboxOpts is QEMU's seccomp sandbox: obsolete system calls and
// changes of scheduling and CPU affinity are refused. Two more knobs
// cannot be turned on while QEMU daemonizes itself (QEMU 7.2 installs the
// filter before it does): elevateprivileges=deny refuses the setsid of
// -daemonize and spawn=deny its fork. QEMU runs without privileges
// anyway, and libseccomp sets no_new_privs, so exec cannot regain any.
const sandboxOpts = "on,obsolete=deny,resourcecontrol=deny"

// giveDir makes dir u's, mode 0700, with the files QEMU reopens across
// launches (its logs); without u it does nothing. Lchown, so that a link
// QEMU put in its own directory never hands another file to it.
func giveDir(dir string, u *User) error {
	if u == nil {
		return nil
	}
	if err := os.Chown(dir, u.UID, u.GID); err != nil {
		return fmt.Errorf("give %s to uid %d: %w", dir, u.UID, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	for _, name := range []string{ConsoleLog, LogFile} {
		err := os.Lchown(filepath.Join(dir, name), u.UID, u.GID)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("give %s to uid %d: %w", name, u.UID, err)
		}
	}
	return nil
}

// credential is how exec runs a process as u; nil (the caller's own)
// without u.
func credential(u *User) *syscall.Credential {
	if u == nil {
		return nil
	}
	c := &syscall.Credential{Uid: uint32(u.UID), Gid: uint32(u.GID), Groups: []uint32{}}
	for _, g := range u.Groups {
		c.Groups = append(c.Groups, uint32(g))
	}
	return c
}
