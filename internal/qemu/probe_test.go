package qemu

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func probeDirs(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob("/tmp/shoal-probe-*")
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// checkNoNewProbeDirs fails if probe dirs appeared that were not in before.
func checkNoNewProbeDirs(t *testing.T, before []string) {
	t.Helper()
	for _, d := range probeDirs(t) {
		if !slices.Contains(before, d) {
			t.Errorf("probe left %s behind", d)
		}
	}
}

func TestProbeAccelBogusKernel(t *testing.T) {
	bin := qemuBinary(t)
	before := probeDirs(t)
	start := time.Now()
	accel, reason := ProbeAccel(testCtx(t), testLog(t), bin, "/nonexistent/vmlinuz", "/nonexistent/initrd",
		"console=ttyS0", 4*time.Second)
	took := time.Since(start)
	t.Logf("accel=%s reason=%q after %s", accel, reason, took)
	if accel != "tcg" || reason == "" {
		t.Fatalf("ProbeAccel = (%q, %q), want tcg and a reason", accel, reason)
	}
	if took > 2*time.Second {
		t.Errorf("took %s, want a quick answer", took)
	}
	if _, err := os.Stat("/dev/kvm"); err == nil && !strings.Contains(reason, "/nonexistent/vmlinuz") {
		t.Errorf("reason %q does not name the kernel", reason)
	}
	checkNoNewProbeDirs(t, before)
}

// The probe machinery, run with TCG on a stand-in kernel that prints the
// marker: it boots, sees the marker, and cleans up.
func TestBootProbeSeesMarker(t *testing.T) {
	bin := qemuBinary(t)
	before := probeDirs(t)
	kernel := multibootKernel(t, "booting\r\n"+ProbeMarker+"\r\n")
	start := time.Now()
	if err := bootProbe(testCtx(t), testLog(t), bin, "tcg", kernel, "", "console=ttyS0", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("probe booted in %s", time.Since(start))
	checkNoNewProbeDirs(t, before)
}

func TestBootProbeTimesOut(t *testing.T) {
	bin := qemuBinary(t)
	before := probeDirs(t)
	kernel := multibootKernel(t, "") // halts silently
	start := time.Now()
	err := bootProbe(testCtx(t), testLog(t), bin, "tcg", kernel, "", "", time.Second)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "TCG guest did not boot within 1s") {
		t.Fatalf("err = %v, want a timeout", err)
	}
	if took < time.Second || took > 4*time.Second {
		t.Errorf("took %s for a 1s timeout", took)
	}
	checkNoNewProbeDirs(t, before)
}
