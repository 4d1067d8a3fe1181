package qemu

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// helperDirEnv makes the test binary act as a short-lived launcher: it
// launches a paused QEMU for the dir, prints the pid and exits.
const helperDirEnv = "SHOAL_QEMU_TEST_LAUNCH_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperDirEnv); dir != "" {
		os.Exit(helperLaunch(dir))
	}
	os.Exit(m.Run())
}

func helperLaunch(dir string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := Launch(ctx, log, bin, testConfig(dir, true))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(p.Pid)
	return 0 // exit without Close or Kill: the VM must stay
}

func qemuBinary(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("qemu-system-x86_64 is required under CI: %v", err)
		}
		t.Skipf("qemu-system-x86_64 not installed: %v", err)
	}
	return bin
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// testDir makes a short state dir and, at cleanup, kills any QEMU still
// running for it and removes it.
func testDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "sq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, pid := range findOurQEMUs(dir) {
			if h, err := openPid(pid, dir); err == nil {
				_ = h.kill()
				select {
				case <-h.exited:
				case <-time.After(5 * time.Second):
					t.Errorf("qemu pid %d survived SIGKILL", pid)
				}
				h.close()
				t.Errorf("test left qemu pid %d running for %s", pid, dir)
			}
		}
		os.RemoveAll(dir)
	})
	return dir
}

func testConfig(dir string, paused bool) Config {
	return Config{
		Name:      "t-" + filepath.Base(dir),
		Dir:       dir,
		Accel:     "tcg",
		CPUs:      1,
		MemoryMiB: 64,
		Paused:    paused,
	}
}

func launch(t *testing.T, cfg Config) *Process {
	t.Helper()
	p, err := Launch(testCtx(t), testLog(t), qemuBinary(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })
	return p
}

// multibootKernel writes a tiny multiboot (a.out kludge) kernel that
// prints msg on COM1 and halts, or only halts when msg is empty. QEMU's
// -kernel loads it directly, so it stands in for a real kernel in tests.
func multibootKernel(t *testing.T, msg string) string {
	t.Helper()
	const (
		base   = 0x100000
		hdrLen = 32
	)
	var code []byte
	if msg == "" {
		code = []byte{0xFA, 0xF4, 0xEB, 0xFC} // cli; hlt; jmp -4
	} else {
		msgAddr := uint32(base + hdrLen + 21)
		code = []byte{0x66, 0xBA, 0xF8, 0x03, 0xBE} // mov dx,0x3f8; mov esi,imm32
		code = binary.LittleEndian.AppendUint32(code, msgAddr)
		code = append(code,
			0xAC,       // lodsb
			0x84, 0xC0, // test al,al
			0x74, 0x03, // jz +3
			0xEE,       // out dx,al
			0xEB, 0xF8, // jmp -8 (to lodsb)
			0xFA, 0xF4, // cli; hlt
			0xEB, 0xFC, // jmp -4
		)
		code = append(code, msg...)
		code = append(code, 0)
	}
	return writeMultiboot(t, code)
}

// writeMultiboot writes a multiboot kernel whose code (32-bit protected
// mode) is code, loaded right after the 32-byte header at 1 MiB.
func writeMultiboot(t *testing.T, code []byte) string {
	t.Helper()
	const (
		base   = 0x100000
		hdrLen = 32
		magic  = 0x1BADB002
		flags  = 0x00010000 // load addresses are in the header
	)
	sum := uint32(magic + flags)
	var hdr []byte
	for _, v := range []uint32{magic, flags, -sum, base, base, 0, 0, base + hdrLen} {
		hdr = binary.LittleEndian.AppendUint32(hdr, v)
	}
	path := filepath.Join(t.TempDir(), "kernel")
	if err := os.WriteFile(path, append(hdr, code...), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// waitFile waits until path contains want.
func waitFile(t *testing.T, path, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not contain %q after %s; it has %q", path, want, timeout, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
