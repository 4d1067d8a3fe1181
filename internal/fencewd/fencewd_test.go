package fencewd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/qemu"
)

// startQEMU starts an idle QEMU that looks like the VM of vmDir.
func startQEMU(t *testing.T, vmDir string) *exec.Cmd {
	t.Helper()
	if err := os.MkdirAll(vmDir, 0o750); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S",
		"-chardev", "socket,id=qmp,path="+filepath.Join(vmDir, qemu.QMPSocket)+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control", "-pidfile", filepath.Join(vmDir, qemu.PidFile))
	if err := cmd.Start(); err != nil {
		t.Skipf("no QEMU here: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(filepath.Join(vmDir, qemu.PidFile)); err == nil {
			return cmd
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("QEMU did not write its pidfile")
	return nil
}

func exited(cmd *exec.Cmd) <-chan struct{} {
	ch := make(chan struct{})
	go func() { _ = cmd.Wait(); close(ch) }()
	return ch
}

// TestWatchdogKillsHAVMsOnlyPastTheDeadline: armed, the watchdog leaves
// every VM alone; once the deadline passes it kills the VMs marked HA,
// and only those.
func TestWatchdogKillsHAVMsOnlyPastTheDeadline(t *testing.T) {
	dir := t.TempDir()
	haDir, plainDir := filepath.Join(dir, "vms", "ha1"), filepath.Join(dir, "vms", "plain1")
	ha, plain := startQEMU(t, haDir), startQEMU(t, plainDir)
	if err := MarkHA(haDir, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(haDir, "ha")); err == nil {
		t.Error("the HA mark is in the VM's dir, which its QEMU user owns and could remove it from")
	}
	if err := Arm(dir, Now()+time.Second); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), dir) }()
	haGone, plainGone := exited(ha), exited(plain)
	select {
	case <-haGone:
		t.Fatal("the HA VM was killed before the deadline")
	case <-time.After(500 * time.Millisecond):
	}
	if b, err := os.ReadFile(PidPath(dir)); err != nil || string(b) != fmt.Sprintf("%d\n", os.Getpid()) {
		t.Errorf("pidfile holds %q (%v), want this process's pid", b, err)
	}
	select {
	case <-haGone:
	case <-time.After(5 * time.Second):
		t.Fatal("the HA VM still runs 5s after the deadline")
	}
	select {
	case <-plainGone:
		t.Fatal("the watchdog killed a VM that is not HA")
	case <-time.After(500 * time.Millisecond):
	}
	// Its state dir removed, the watchdog ends.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the watchdog outlived its state dir")
	}
}

func TestDeadlineOfAnotherBootHasPassed(t *testing.T) {
	dir := t.TempDir()
	if _, armed := deadline(dir); armed {
		t.Fatal("a deadline was never armed, yet one is read")
	}
	if err := os.MkdirAll(filepath.Join(dir, "fence"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(deadlinePath(dir), []byte("another-boot 99999999999999999\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if at, armed := deadline(dir); !armed || at > Now() {
		t.Fatalf("deadline of another boot: %s armed %v, want passed", at, armed)
	}
}
