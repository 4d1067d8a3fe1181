// Package hostcheck answers "is this machine ready to be a Shoal host?": it
// looks for QEMU and its tools, KVM, bridge and tun/tap support, privileges,
// free memory and free disk, and says for every problem what to do about it.
//
// Run inspects the real machine. RunWith takes an Env whose function fields
// stand in for the file system, PATH lookups and commands, so that tests can
// simulate a machine without QEMU, with little memory, and so on. Nothing
// here changes the machine: no module is loaded and no link is created.
package hostcheck

import (
	"context"
	"fmt"
	"strings"
)

// Check is the outcome of one readiness check. A passed check has OK set; a
// warning has Warn set (and OK clear): Shoal works, but not as well; any
// other check failed and Shoal will not work until Fix is done.
type Check struct {
	Name   string
	OK     bool
	Warn   bool
	Detail string
	Fix    string // what to do, e.g. "apt-get install qemu-system-x86"
}

// Status is "ok", "WARN" or "FAIL".
func (c Check) Status() string {
	switch {
	case c.Warn:
		return "WARN"
	case c.OK:
		return "ok"
	}
	return "FAIL"
}

// Failed reports whether the check failed outright (not merely a warning).
func (c Check) Failed() bool { return !c.OK && !c.Warn }

// Report is the list of checks in the order they ran.
type Report struct {
	Checks []Check
}

// OK reports whether no check failed; warnings do not count.
func (r Report) OK() bool {
	for _, c := range r.Checks {
		if c.Failed() {
			return false
		}
	}
	return true
}

// Find returns the check with this name.
func (r Report) Find(name string) (Check, bool) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return Check{}, false
}

// String renders one aligned line per check, e.g.
//
//	ok   qemu-system-x86_64  QEMU emulator version 7.2.22
//	FAIL qemu-img            not found in PATH — apt-get install qemu-utils
func (r Report) String() string {
	width := 0
	for _, c := range r.Checks {
		width = max(width, len(c.Name))
	}
	var b strings.Builder
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "%-4s %-*s  %s", c.Status(), width, c.Name, c.Detail)
		if c.Fix != "" && c.Status() != "ok" {
			b.WriteString(" — " + c.Fix)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// Options tune Run.
type Options struct {
	// DataDir is where Shoal keeps VM disks and state; free disk is
	// measured there (or at its nearest existing parent). Empty skips the
	// disk check.
	DataDir string
	// QEMU is the system emulator to look for; default qemu-system-x86_64.
	QEMU string
	// MinFreeMemMiB and MinFreeDiskMiB are the minimums below which the
	// memory and disk checks fail; zero only reports the figure.
	MinFreeMemMiB, MinFreeDiskMiB int64
	// Accel is the result of a KVM probe done elsewhere ("kvm", "tcg");
	// empty means not probed and skips the accel check. AccelReason
	// explains a "tcg" result.
	Accel       string
	AccelReason string
}

// DefaultQEMU is the emulator looked for when Options.QEMU is empty.
const DefaultQEMU = "qemu-system-x86_64"

// Run checks the real machine.
func Run(ctx context.Context, opts Options) Report {
	return RunWith(ctx, opts, Env{})
}

// RunWith checks the machine that env describes. Nil fields of env fall
// back to the real machine (see RealEnv).
func RunWith(ctx context.Context, opts Options, env Env) Report {
	env = env.withDefaults()
	if opts.QEMU == "" {
		opts.QEMU = DefaultQEMU
	}
	checks := []Check{
		checkQEMU(ctx, env, opts.QEMU),
		checkQEMUImg(ctx, env),
		checkGenisoimage(env),
		checkKVM(env),
	}
	if opts.Accel != "" {
		checks = append(checks, checkAccel(opts.Accel, opts.AccelReason))
	}
	checks = append(checks,
		checkBridge(env),
		checkTun(env),
		checkPrivileges(env),
		checkMemory(env, opts.MinFreeMemMiB),
	)
	if opts.DataDir != "" {
		checks = append(checks, checkDisk(env, opts.DataDir, opts.MinFreeDiskMiB))
	}
	return Report{Checks: checks}
}
