package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// An image to import comes from a user and may be crafted: qemu-img has
// had bugs that such images exploit (info alone parses all of the image's
// metadata), and an image can make it loop or allocate without end. So
// Import runs qemu-img in a sandbox: as an unprivileged user (when this
// process is root), under CPU time, address space and file size limits
// (set by util-linux prlimit, which then executes qemu-img), with its
// files passed as open descriptors and made its own for the run only, so
// that it reaches no other file by path.

// Limits bound one sandboxed run of qemu-img.
type Limits struct {
	CPU    time.Duration // CPU time; over it the kernel kills qemu-img
	Memory int64         // address space, bytes
	// FileSize is the largest file qemu-img may write, bytes: the room
	// left on the output's disk. 0 forbids writing any.
	FileSize int64
}

// SandboxUID and SandboxGID are the user qemu-img runs as on untrusted
// images: nobody, who owns no file. (Each VM's QEMU has a user of its
// own, from a range apart from it.)
const SandboxUID, SandboxGID = 65534, 65534

// Limits of the runs of Import. info reads headers and tables only;
// convert of a large compressed image takes a while.
var (
	InfoLimits    = Limits{CPU: 30 * time.Second, Memory: 1 << 30}
	ConvertLimits = Limits{CPU: time.Hour, Memory: 2 << 30}
)

// ErrNoRoom is wrapped when the converted image would not fit the room it
// was given on disk.
var ErrNoRoom = errors.New("no room for the converted image")

// qemuImgBin is the qemu-img that sandboxed runs (a test puts a stand-in).
var qemuImgBin = "qemu-img"

// fdPath is how the sandboxed qemu-img names the i-th file it was given.
func fdPath(i int) string { return "/proc/self/fd/" + strconv.Itoa(3+i) }

// prlimitArgs is the argv, after "prlimit", that runs bin with args under
// lim.
func prlimitArgs(lim Limits, bin string, args ...string) []string {
	cpu := max(int64(lim.CPU.Round(time.Second)/time.Second), 1)
	a := []string{
		"--cpu=" + strconv.FormatInt(cpu, 10),
		"--as=" + strconv.FormatInt(lim.Memory, 10),
		"--fsize=" + strconv.FormatInt(max(lim.FileSize, 0), 10),
		"--core=0",
		"--",
		bin,
	}
	return append(a, args...)
}

// sandboxed runs qemu-img args under lim, with files as its descriptors
// 3, 4, ... (named by fdPath in args), and returns its standard output.
func sandboxed(ctx context.Context, lim Limits, files []*os.File, args ...string) ([]byte, error) {
	bin, err := exec.LookPath(qemuImgBin)
	if err != nil {
		return nil, fmt.Errorf("qemu-img not found (apt-get install qemu-utils): %w", err)
	}
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		return nil, fmt.Errorf("prlimit not found (apt-get install util-linux): %w", err)
	}
	cmd := exec.CommandContext(ctx, prlimit, prlimitArgs(lim, bin, args...)...)
	cmd.ExtraFiles = files
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() == 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: SandboxUID, Gid: SandboxGID, Groups: []uint32{}}
		restore, err := lend(files)
		defer restore()
		if err != nil {
			return nil, err
		}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err == nil {
		return out, nil
	}
	msg := strings.TrimSpace(stderr.String())
	if msg == "" {
		msg = "no output"
	}
	if strings.Contains(msg, "File too large") { // QEMU ignores SIGXFSZ
		return out, fmt.Errorf("qemu-img %s: the output grew over the %s of room it had: %w", args[0], api.FormatSize(lim.FileSize), ErrNoRoom)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			if ws.Signal() == syscall.SIGXFSZ {
				return out, fmt.Errorf("qemu-img %s: the output grew over the %s of room it had: %w", args[0], api.FormatSize(lim.FileSize), ErrNoRoom)
			}
			if ws.Signal() == syscall.SIGXCPU || ws.Signal() == syscall.SIGKILL && ctx.Err() == nil {
				return out, fmt.Errorf("qemu-img %s was stopped after %s of CPU time: %w", args[0], lim.CPU, ErrNotDiskImage)
			}
			return out, fmt.Errorf("qemu-img %s died (%s) within its limits of %s of memory: %s: %w",
				args[0], ws.Signal(), api.FormatSize(lim.Memory), msg, ErrNotDiskImage)
		}
	}
	return out, fmt.Errorf("qemu-img %s: %s: %w", args[0], msg, err)
}

// lend makes files the sandbox user's for a run; restore gives them back
// to their owners.
func lend(files []*os.File) (restore func(), err error) {
	var undo []func()
	restore = func() {
		for _, u := range undo {
			u()
		}
	}
	for _, f := range files {
		st, err := f.Stat()
		if err != nil {
			return restore, err
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok {
			return restore, fmt.Errorf("owner of %s unknown", f.Name())
		}
		if err := f.Chown(SandboxUID, SandboxGID); err != nil {
			return restore, fmt.Errorf("lend %s to the sandbox: %w", f.Name(), err)
		}
		undo = append(undo, func() { _ = f.Chown(int(sys.Uid), int(sys.Gid)) })
	}
	return restore, nil
}
