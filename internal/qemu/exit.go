package qemu

import (
	"encoding/json"
	"time"

	"github.com/shoalvm/shoal/internal/qemu/qmp"
)

// Why QEMU ends, as QEMU reports it.
//
// QEMU runs daemonized, a child of init (or the nearest subreaper), so its
// exit status never reaches the agent, and after an agent restart there is
// no parent of ours at all. What QEMU does tell, whoever started it, is
// the SHUTDOWN event it sends on QMP just before it exits on a request
// (its "reason": guest-shutdown, guest-panic, host-signal, ...), and the
// GUEST_PANICKED event when the guest's kernel reports a panic through the
// pvpanic device (Args adds one, with -action panic=exit-failure). A QEMU
// that exits without a SHUTDOWN was killed (SIGKILL, the OOM killer) or
// crashed itself.

// ExitKind says whether an exit was the guest's wish.
type ExitKind string

const (
	// ExitPowerOff: the guest powered itself off (or asked for a reset
	// that QEMU was told to treat as one). Like on real hardware, the VM
	// stays off.
	ExitPowerOff ExitKind = "poweroff"
	// ExitCrash: anything else. QEMU was killed or crashed, was stopped
	// from the host behind its manager's back, or the guest panicked.
	ExitCrash ExitKind = "crash"
)

// Exit is why a QEMU ended.
type Exit struct {
	Kind   ExitKind
	Cause  string // QEMU's SHUTDOWN reason ("guest-shutdown", "host-signal", ...); "" when it sent none
	Reason string // for people: "the guest kernel panicked", ...
}

// Crashed reports whether the exit was not the guest's wish.
func (e Exit) Crashed() bool { return e.Kind != ExitPowerOff }

// exitDrain bounds how long ExitReason waits, after the process is gone,
// for the last events on the QMP socket to be read: they are in the
// socket's buffer by then, so this is only reached on a wedged reader.
const exitDrain = 2 * time.Second

// ExitReason tells why this QEMU ended. Call it once Exited has fired,
// before Close (Close drops the unread rest of the QMP stream). Before
// the exit it returns an Exit for a QEMU that sent no SHUTDOWN.
func (p *Process) ExitReason() Exit {
	select {
	case <-p.h.exited:
		select {
		case <-p.qmp.Done():
		case <-time.After(exitDrain):
		}
	default:
	}
	var shutdown *qmp.Event
	if ev, ok := p.qmp.LastEvent("SHUTDOWN"); ok {
		shutdown = &ev
	}
	_, panicked := p.qmp.LastEvent("GUEST_PANICKED")
	return classifyExit(shutdown, panicked)
}

// classifyExit turns the last SHUTDOWN event (nil: none came) and whether
// the guest panicked into an Exit. Pure.
func classifyExit(shutdown *qmp.Event, panicked bool) Exit {
	var d struct {
		Guest  bool   `json:"guest"`
		Reason string `json:"reason"`
	}
	if shutdown != nil {
		_ = json.Unmarshal(shutdown.Data, &d) // an undecodable event counts as "no reason given"
	}
	e := Exit{Kind: ExitCrash, Cause: d.Reason}
	switch {
	case panicked || d.Reason == "guest-panic":
		e.Reason = "the guest kernel panicked (see 'shoal vm logs')"
	case shutdown == nil:
		e.Reason = "QEMU was killed (SIGKILL, the OOM killer) or crashed: it ended without a shutdown"
	case d.Reason == "guest-shutdown":
		e.Kind, e.Reason = ExitPowerOff, "the guest powered off"
	case d.Reason == "guest-reset":
		e.Kind, e.Reason = ExitPowerOff, "the guest reset itself and QEMU was told not to reboot"
	case d.Reason == "host-signal":
		e.Reason = "QEMU was stopped by a signal (SIGTERM, SIGINT or SIGHUP) from the host; qemu.log names the sender"
	case d.Reason == "host-qmp-quit":
		e.Reason = "QEMU was told to quit over QMP"
	case d.Reason == "host-error":
		e.Reason = "QEMU hit an error it could not recover from (see qemu.log)"
	case d.Guest:
		e.Kind, e.Reason = ExitPowerOff, "the guest shut down ("+d.Reason+")"
	case d.Reason == "":
		e.Reason = "QEMU shut down without saying why"
	default:
		e.Reason = "QEMU shut down (" + d.Reason + ")"
	}
	return e
}
