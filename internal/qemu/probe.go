package qemu

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ProbeMarker is the line a probe guest prints on its serial console once
// it has booted (when its kernel command line has shoal.probe=1).
const ProbeMarker = "SHOAL-PROBE-OK"

// probeMemoryMiB is the probe VM's memory.
const probeMemoryMiB = 256

// ProbeAccel reports whether KVM really runs a guest here. /dev/kvm can
// exist and open fine while guests hang early in boot, so it boots kernel
// and initrd with -accel kvm and cmdline+" shoal.probe=1" and waits up to
// timeout for ProbeMarker on the serial console. It returns ("kvm", "") on
// success, else ("tcg", reason), e.g. "/dev/kvm missing" or "KVM guest did
// not boot within 4s". The probe VM and its temporary dir are removed.
func ProbeAccel(ctx context.Context, log *slog.Logger, binary, kernel, initrd, cmdline string, timeout time.Duration) (accel string, reason string) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return "tcg", "/dev/kvm missing"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg", fmt.Sprintf("/dev/kvm not usable: %v", err)
	}
	f.Close()
	if err := bootProbe(ctx, log, binary, "kvm", kernel, initrd, cmdline, timeout); err != nil {
		log.Info("kvm probe failed; using tcg", "reason", err.Error())
		return "tcg", err.Error()
	}
	log.Info("kvm probe booted a guest; using kvm")
	return "kvm", ""
}

// bootProbe boots a probe guest with accel and waits for ProbeMarker. Its
// error text is the reason shown to users.
func bootProbe(ctx context.Context, log *slog.Logger, binary, accel, kernel, initrd, cmdline string, timeout time.Duration) error {
	what := strings.ToUpper(accel)
	if kernel == "" {
		return fmt.Errorf("no probe kernel given")
	}
	for _, p := range []string{kernel, initrd} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("probe image unusable: %w", err)
		}
	}
	kernel, _ = filepath.Abs(kernel)
	if initrd != "" {
		initrd, _ = filepath.Abs(initrd)
	}
	dir, err := os.MkdirTemp("/tmp", "shoal-probe-")
	if err != nil {
		return fmt.Errorf("probe dir: %w", err)
	}
	defer os.RemoveAll(dir)

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	p, err := Launch(ctx, log, binary, Config{
		Name:      "probe",
		Dir:       dir,
		Accel:     accel,
		CPUs:      1,
		MemoryMiB: probeMemoryMiB,
		Kernel:    kernel,
		Initrd:    initrd,
		Cmdline:   strings.TrimSpace(cmdline + " shoal.probe=1"),
	})
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s guest did not start within %s", what, timeout)
		}
		return fmt.Errorf("%s guest failed to start: %w", what, err)
	}
	defer func() {
		if err := p.Kill(); err != nil {
			log.Warn("probe vm kill failed", "err", err)
		}
	}()

	logPath := filepath.Join(dir, ConsoleLog)
	var seen []byte
	var off int64
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		seen, off = readMore(logPath, seen, off)
		if bytes.Contains(seen, []byte(ProbeMarker)) {
			log.Debug("probe guest booted", "accel", accel, "took", time.Since(start).Round(time.Millisecond))
			return nil
		}
		select {
		case <-p.Exited():
			seen, _ = readMore(logPath, seen, off)
			if bytes.Contains(seen, []byte(ProbeMarker)) {
				return nil
			}
			return fmt.Errorf("%s guest exited without printing %s%s", what, ProbeMarker, tail(seen))
		case <-ctx.Done():
			return fmt.Errorf("%s guest did not boot within %s%s", what, timeout, tail(seen))
		case <-tick.C:
		}
	}
}

// readMore appends what was added to path after off to seen, keeping only
// a bounded tail.
func readMore(path string, seen []byte, off int64) ([]byte, int64) {
	f, err := os.Open(path)
	if err != nil {
		return seen, off
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return seen, off
	}
	b, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	seen = append(seen, b...)
	if len(seen) > 8192 {
		seen = append([]byte(nil), seen[len(seen)-8192:]...)
	}
	return seen, off + int64(len(b))
}

// tail formats the last console line for an error message.
func tail(out []byte) string {
	s := strings.TrimSpace(string(out))
	if s == "" {
		return " (no console output)"
	}
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = strings.TrimSpace(s[i+1:])
	}
	if len(s) > 120 {
		s = s[len(s)-120:]
	}
	return fmt.Sprintf(" (last console line: %q)", s)
}
