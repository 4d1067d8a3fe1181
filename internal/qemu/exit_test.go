package qemu

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/qemu/qmp"
)

func TestClassifyExit(t *testing.T) {
	shutdown := func(guest bool, reason string) *qmp.Event {
		d, _ := json.Marshal(map[string]any{"guest": guest, "reason": reason})
		return &qmp.Event{Name: "SHUTDOWN", Data: d}
	}
	tests := []struct {
		name     string
		shutdown *qmp.Event
		panicked bool
		kind     ExitKind
		cause    string
		reason   string // a part of Reason
	}{
		{"no event: killed", nil, false, ExitCrash, "", "killed"},
		{"guest powered off", shutdown(true, "guest-shutdown"), false, ExitPowerOff, "guest-shutdown", "powered off"},
		{"guest panic", shutdown(true, "guest-panic"), false, ExitCrash, "guest-panic", "panicked"},
		{"panic event without shutdown", nil, true, ExitCrash, "", "panicked"},
		{"panic event wins over a shutdown", shutdown(true, "guest-shutdown"), true, ExitCrash, "guest-shutdown", "panicked"},
		{"reset with -no-reboot", shutdown(true, "guest-reset"), false, ExitPowerOff, "guest-reset", "reset"},
		{"SIGTERM from the host", shutdown(false, "host-signal"), false, ExitCrash, "host-signal", "signal"},
		{"QMP quit", shutdown(false, "host-qmp-quit"), false, ExitCrash, "host-qmp-quit", "quit"},
		{"host error", shutdown(false, "host-error"), false, ExitCrash, "host-error", "error"},
		{"unknown guest cause", shutdown(true, "guest-new-thing"), false, ExitPowerOff, "guest-new-thing", "guest-new-thing"},
		{"unknown host cause", shutdown(false, "host-ui"), false, ExitCrash, "host-ui", "host-ui"},
		{"undecodable", &qmp.Event{Name: "SHUTDOWN", Data: json.RawMessage(`[]`)}, false, ExitCrash, "", "without saying why"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := classifyExit(tt.shutdown, tt.panicked)
			if e.Kind != tt.kind || e.Cause != tt.cause || !strings.Contains(e.Reason, tt.reason) {
				t.Errorf("classifyExit = %+v; want kind %s, cause %q, reason with %q", e, tt.kind, tt.cause, tt.reason)
			}
			if e.Crashed() != (tt.kind == ExitCrash) {
				t.Errorf("Crashed() = %v for %s", e.Crashed(), e.Kind)
			}
		})
	}
}

// Guest programs for the exit tests (32-bit code, see writeMultiboot).
var (
	// ACPI S5: SLP_EN with SLP_TYP 0 into PM1a_CNT (q35: PMBASE 0x600 + 4,
	// set up by the firmware), as a guest's poweroff does.
	acpiPowerOff = []byte{0x66, 0xBA, 0x04, 0x06, 0x66, 0xB8, 0x00, 0x20, 0x66, 0xEF} // mov dx,0x604; mov ax,0x2000; out dx,ax
	// pvpanic "panicked" (bit 0) into its port 0x505, as a panicking
	// Linux's pvpanic driver does.
	pvpanicPanic = []byte{0x66, 0xBA, 0x05, 0x05, 0xB0, 0x01, 0xEE} // mov dx,0x505; mov al,1; out dx,al
	halt         = []byte{0xFA, 0xF4, 0xEB, 0xFC}                   // cli; hlt; jmp -4
)

// exitOf waits for p to exit and returns why.
func exitOf(t *testing.T, p *Process) Exit {
	t.Helper()
	select {
	case <-p.Exited():
	case <-time.After(15 * time.Second):
		t.Fatal("QEMU did not exit within 15s")
	}
	return p.ExitReason()
}

// TestExitReason tells a QEMU that was killed or signalled, or whose guest
// panicked, from one whose guest powered off, with real QEMUs.
func TestExitReason(t *testing.T) {
	guest := func(t *testing.T, code []byte) Config {
		cfg := testConfig(testDir(t), false)
		cfg.Kernel = writeMultiboot(t, append(append([]byte{}, code...), halt...))
		return cfg
	}
	tests := []struct {
		name  string
		cfg   func(t *testing.T) Config
		act   func(t *testing.T, p *Process)
		kind  ExitKind
		cause string
	}{
		{"SIGKILL is a crash", func(t *testing.T) Config { return testConfig(testDir(t), true) },
			func(t *testing.T, p *Process) { signal(t, p, syscall.SIGKILL) }, ExitCrash, ""},
		{"SIGTERM from the host is a crash", func(t *testing.T) Config { return testConfig(testDir(t), true) },
			func(t *testing.T, p *Process) { signal(t, p, syscall.SIGTERM) }, ExitCrash, "host-signal"},
		{"guest ACPI poweroff is a power-off", func(t *testing.T) Config { return guest(t, acpiPowerOff) },
			nil, ExitPowerOff, "guest-shutdown"},
		{"guest panic via pvpanic is a crash", func(t *testing.T) Config { return guest(t, pvpanicPanic) },
			nil, ExitCrash, "guest-panic"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := launch(t, tt.cfg(t))
			if tt.act != nil {
				tt.act(t, p)
			}
			e := exitOf(t, p)
			t.Logf("exit: %+v", e)
			if e.Kind != tt.kind || e.Cause != tt.cause {
				t.Errorf("ExitReason = %+v; want kind %s, cause %q", e, tt.kind, tt.cause)
			}
		})
	}
}

func signal(t *testing.T, p *Process, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(p.Pid, sig); err != nil {
		t.Fatal(err)
	}
}
