package rbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool"
)

// writer is a qemu-io that keeps a volume open, as a VM's QEMU does, and
// writes when told.
type writer struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	out   bytes.Buffer
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.Write(p)
}

func (w *writer) output() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.String()
}

// startWriter opens vol with qemu-io on host.
func startWriter(t *testing.T, host string, vol QEMUVolume) *writer {
	t.Helper()
	w := &writer{}
	w.cmd = exec.Command("ip", append([]string{"netns", "exec", hostNS[host], "qemu-io"}, imageOpts(t, vol)...)...)
	w.cmd.Stdout, w.cmd.Stderr = w, w
	var err error
	if w.stdin, err = w.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.stop)
	return w
}

// stop closes the volume as a QEMU that quits does.
func (w *writer) stop() {
	if w.cmd.ProcessState != nil {
		return
	}
	_, _ = io.WriteString(w.stdin, "quit\n")
	done := make(chan struct{})
	go func() { _ = w.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = w.cmd.Process.Kill()
		<-done
	}
}

// write writes 64 KiB of pattern at 0 and waits for the outcome.
func (w *writer) write(pattern int) error {
	before := w.output()
	if _, err := fmt.Fprintf(w.stdin, "write -P %d 0 64k\n", pattern); err != nil {
		return err
	}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		out := strings.TrimPrefix(w.output(), before)
		switch {
		case strings.Contains(out, "write failed"):
			return errors.New(strings.TrimSpace(out))
		case strings.Contains(out, "wrote 65536/65536"):
			return nil
		}
	}
	return fmt.Errorf("no outcome of a write in 60 s: %s", w.output())
}

// TestFence: a fenced host's running writer fails its next write
// (EBLOCKLISTED, -108), a client on another host then takes the image
// and writes, a new client on the fenced host cannot, and after Unfence
// it can again.
func TestFence(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d := newDriver(t)
	id := testID(t)
	if err := d.Create(ctx, pool.Volume{ID: id, SizeBytes: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	defer d.Delete(ctx, id)
	defer d.Unfence(context.Background(), "ha", []string{id})
	if err := d.Fence(ctx, "nowhere", []string{id}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("fence of an unknown host: %v, want invalid", err)
	}
	vol := d.QEMU(id)
	w := startWriter(t, "ha", vol)
	if err := w.write(1); err != nil {
		t.Fatalf("write before the fence: %v", err)
	}
	t0 := time.Now()
	for i := 0; i < 2; i++ { // the second is a no-op
		if err := d.Fence(ctx, "ha", []string{id}); err != nil {
			t.Fatal(err)
		}
	}
	fenced := time.Since(t0)
	err := w.write(2)
	if err == nil || !strings.Contains(err.Error(), "-108") {
		t.Fatalf("write of a fenced host: %v, want it to fail with -108", err)
	}
	t.Logf("fence took %v; the fenced writer's next write: %v", fenced.Round(time.Millisecond), err)
	t1 := time.Now()
	if out, err := qemuIO(ctx, t, "hb", vol, "write -P 3 0 64k", "read -P 3 0 64k"); err != nil {
		t.Fatalf("another host after the fence: %v: %s", err, out)
	}
	t.Logf("another host opened, took the lock, wrote and read in %v", time.Since(t1).Round(time.Millisecond))
	if out, err := qemuIO(ctx, t, "ha", vol, "write -P 4 0 64k"); err == nil {
		t.Fatalf("a new client on the fenced host wrote: %s", out)
	}
	for i := 0; i < 2; i++ {
		if err := d.Unfence(ctx, "ha", []string{id}); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := qemuIO(ctx, t, "ha", vol, "read -P 3 0 64k", "write -P 5 0 64k", "read -P 5 0 64k"); err != nil {
		t.Fatalf("a new client on the unfenced host: %v: %s", err, out)
	}
}
