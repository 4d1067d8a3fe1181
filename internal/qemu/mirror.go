package qemu

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Disk mirroring for migration without shared storage. The target,
// launched with Config.Incoming and disks of the same size, backed by the
// same base images, exports its disks over NBD; the source mirrors each
// disk's top layer into the export while the guest runs, then migrates:
//
//	target.StartNBDServer(ctx, ip, port, creds)
//	target.ExportDisk(ctx, "disk0")             // per disk
//	uri, _ := target.PrepareIncoming(ctx, "tcp:"+ip+":0", in)
//	source.MirrorToNBD(ctx, "disk0", ip, port, creds)
//	source.WaitMirrorReady(ctx, "disk0", poll)
//	source.Migrate(ctx, uri, MigrateOptions{PauseBeforeSwitchover: true, ...})
//	// QueryMigrate reports StatePreSwitchover; the guest is paused:
//	source.CompleteMirror(ctx, "disk0")
//	source.MigrateContinue(ctx, StatePreSwitchover)
//	source.WaitMigration(ctx, poll)
//	target.StopNBDServer(ctx)
//	target.Resume(ctx)
//
// On failure: source.AbortMirror per disk, source.CancelMigration, and the
// target is killed. Mirrors copy in the background: a guest write
// completes once the source has it, and the job copies it after; the
// last blocks go in CompleteMirror, with the guest paused. (An active
// "write-blocking" mirror, where each guest write also waits for the
// target, was tried first: on QEMU 7.2 under TCG it left a guest with lost
// or corrupted memory after about one migration in fifty whenever the
// guest wrote to its disk during the switchover.)
//
// Names: node is the disk's block node ("disk0", ... see Args); the NBD
// export is named node too, its block-export id is "exp-"+node, and on
// the source both the NBD client node and the mirror job are "mig-"+node.

// ErrMirrorFailed is wrapped by the errors of WaitMirrorReady and
// CompleteMirror when the mirror job failed or is gone.
var ErrMirrorFailed = errors.New("disk mirror failed")

// mirrorPoll is how often CompleteMirror and AbortMirror check the job.
const mirrorPoll = 20 * time.Millisecond

// nodeRE keeps "mig-"+node and "exp-"+node within QEMU's 31-byte ids.
var nodeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,26}$`)

func mirrorName(node string) string { return "mig-" + node }
func exportID(node string) string   { return "exp-" + node }

func (p *Process) checkNode(op, node string) error {
	if !nodeRE.MatchString(node) {
		return fmt.Errorf("qemu %s: %s: node name %q: want a letter then up to 26 of A-Z a-z 0-9 _ . -", p.Dir, op, node)
	}
	return nil
}

// StartNBDServer starts QEMU's NBD server on host:port, for ExportDisk.
// With tlsCreds (a server tls-creds-x509 object, AddTLSCreds) clients
// must speak TLS and present a certificate from the CA. QEMU runs one
// NBD server: it fails if one runs already.
func (p *Process) StartNBDServer(ctx context.Context, host string, port int, tlsCreds string) error {
	if host == "" || port < 1 || port > 65535 {
		return fmt.Errorf("qemu %s: nbd server: address %q port %d: want a host and a port from 1 to 65535", p.Dir, host, port)
	}
	return p.startNBDServer(ctx, map[string]any{
		"type": "inet",
		"data": map[string]any{"host": host, "port": strconv.Itoa(port)},
	}, tlsCreds)
}

// StartNBDServerUnix starts QEMU's NBD server on the unix socket path,
// for ExportDisk, without TLS (the socket is local).
func (p *Process) StartNBDServerUnix(ctx context.Context, path string) error {
	if path == "" {
		return fmt.Errorf("qemu %s: nbd server: empty socket path", p.Dir)
	}
	return p.startNBDServer(ctx, map[string]any{"type": "unix", "data": map[string]any{"path": path}}, "")
}

func (p *Process) startNBDServer(ctx context.Context, addr map[string]any, tlsCreds string) error {
	args := map[string]any{"addr": addr}
	if tlsCreds != "" {
		args["tls-creds"] = tlsCreds
	}
	if err := p.qmp.Execute(ctx, "nbd-server-start", args, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return nil
}

type blockExport struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	NodeName string `json:"node-name"`
}

func (p *Process) blockExports(ctx context.Context) ([]blockExport, error) {
	var list []blockExport
	if err := p.qmp.Execute(ctx, "query-block-exports", nil, &list); err != nil {
		return nil, fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return list, nil
}

// ExportDisk exports block node over the NBD server, writable, under the
// name node. It works on a target still waiting for its incoming
// migration: QEMU activates the node for the export. Exporting a node
// already exported is a no-op.
func (p *Process) ExportDisk(ctx context.Context, node string) error {
	if err := p.checkNode("export", node); err != nil {
		return err
	}
	exps, err := p.blockExports(ctx)
	if err != nil {
		return err
	}
	for _, e := range exps {
		if e.ID == exportID(node) {
			if e.NodeName != node {
				return fmt.Errorf("qemu %s: export %s exists for node %s, not %s", p.Dir, e.ID, e.NodeName, node)
			}
			return nil
		}
	}
	if err := p.qmp.Execute(ctx, "block-export-add", map[string]any{
		"type":      "nbd",
		"id":        exportID(node),
		"node-name": node,
		"name":      node,
		"writable":  true,
	}, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return nil
}

// StopNBDServer removes every NBD export, disconnecting any client, and
// stops the NBD server. Without a server it does nothing.
func (p *Process) StopNBDServer(ctx context.Context) error {
	err := p.qmp.Execute(ctx, "nbd-server-stop", nil, nil)
	if err != nil && !strings.Contains(err.Error(), "not running") {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return nil
}

// MirrorToNBD starts mirroring block node to the export named node on the
// NBD server at host:port (the target's StartNBDServer and ExportDisk),
// through TLS with tlsCreds (a client tls-creds-x509 object) if set. Only
// the top layer is copied (sync "top"): the target's disk must already
// have the same backing chain. It returns once the job runs; follow it
// with WaitMirrorReady. It fails if a mirror of node exists already: call
// AbortMirror first to start over. speed caps the copy in bytes per
// second (0: unlimited).
func (p *Process) MirrorToNBD(ctx context.Context, node, host string, port int, tlsCreds string, speed int64) error {
	if host == "" || port < 1 || port > 65535 {
		return fmt.Errorf("qemu %s: mirror %s: address %q port %d: want a host and a port from 1 to 65535", p.Dir, node, host, port)
	}
	return p.mirrorTo(ctx, node, map[string]any{"type": "inet", "host": host, "port": strconv.Itoa(port)}, tlsCreds,
		fmt.Sprintf("nbd://%s:%d", host, port), speed)
}

// MirrorToNBDUnix is MirrorToNBD to an NBD server on the unix socket
// path (a local end of a tunnel to the target), without TLS.
func (p *Process) MirrorToNBDUnix(ctx context.Context, node, path string, speed int64) error {
	if path == "" {
		return fmt.Errorf("qemu %s: mirror %s: empty socket path", p.Dir, node)
	}
	return p.mirrorTo(ctx, node, map[string]any{"type": "unix", "path": path}, "", "nbd+unix://"+path, speed)
}

func (p *Process) mirrorTo(ctx context.Context, node string, server map[string]any, tlsCreds, desc string, speed int64) error {
	if speed < 0 {
		return fmt.Errorf("qemu %s: mirror %s: speed %d: want 0 (unlimited) or more bytes per second", p.Dir, node, speed)
	}
	if err := p.checkNode("mirror", node); err != nil {
		return err
	}
	name := mirrorName(node)
	target := map[string]any{
		"driver":    "nbd",
		"node-name": name,
		"server":    server,
		"export":    node,
	}
	if tlsCreds != "" {
		target["tls-creds"] = tlsCreds
	}
	if err := p.qmp.Execute(ctx, "blockdev-add", target, nil); err != nil {
		return fmt.Errorf("qemu %s: mirror %s: connect to %s: %w", p.Dir, node, desc, err)
	}
	args := map[string]any{
		"job-id":    name,
		"device":    node,
		"target":    name,
		"sync":      "top",
		"copy-mode": "background",
		// Keep a finished job until we dismiss it, to learn how it ended.
		"auto-dismiss": false,
	}
	if speed > 0 {
		args["speed"] = speed
	}
	err := p.qmp.Execute(ctx, "blockdev-mirror", args, nil)
	if err != nil {
		if derr := p.qmp.Execute(ctx, "blockdev-del", map[string]any{"node-name": name}, nil); derr != nil {
			p.log.Warn("qemu: remove nbd node after failed mirror start", "dir", p.Dir, "node", name, "err", derr)
		}
		return fmt.Errorf("qemu %s: mirror %s: %w", p.Dir, node, err)
	}
	p.log.Info("qemu disk mirror started", "pid", p.Pid, "dir", p.Dir, "node", node, "target", desc)
	return nil
}

// MirrorStatus is the state of the mirror job of one disk.
type MirrorStatus struct {
	Found  bool   // a mirror job for the disk exists
	Ready  bool   // the target caught up; it stays in sync while the job runs
	Offset int64  // bytes copied so far, of Len
	Len    int64  // bytes to copy; grows if the guest writes during the copy
	Status string // QEMU job status: "running", "ready", "concluded", ...
	Error  string // why the job failed, once it has ended
}

type blockJob struct {
	Device string `json:"device"`
	Len    int64  `json:"len"`
	Offset int64  `json:"offset"`
	Ready  bool   `json:"ready"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

// MirrorStatus reports the mirror job of block node (from
// query-block-jobs); Found is false when there is none.
func (p *Process) MirrorStatus(ctx context.Context, node string) (MirrorStatus, error) {
	var jobs []blockJob
	if err := p.qmp.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil {
		return MirrorStatus{}, fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	for _, j := range jobs {
		if j.Device == mirrorName(node) {
			return MirrorStatus{Found: true, Ready: j.Ready, Offset: j.Offset, Len: j.Len, Status: j.Status, Error: j.Error}, nil
		}
	}
	return MirrorStatus{}, nil
}

// ended reports whether the job has finished (and waits to be dismissed).
func (s MirrorStatus) ended() bool { return s.Status == "concluded" || s.Status == "null" }

// WaitMirrorReady polls MirrorStatus every poll until the mirror of node
// is ready. The error wraps ErrMirrorFailed if the job failed or is
// missing, and is ctx's error if ctx ends first.
func (p *Process) WaitMirrorReady(ctx context.Context, node string, poll time.Duration) error {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		s, err := p.MirrorStatus(ctx, node)
		if err != nil {
			return err
		}
		switch {
		case !s.Found:
			return fmt.Errorf("qemu %s: %w: no mirror job for %s", p.Dir, ErrMirrorFailed, node)
		case s.ended() || s.Error != "":
			return fmt.Errorf("qemu %s: %w: %s: %s (%s)", p.Dir, ErrMirrorFailed, node, s.Error, s.Status)
		case s.Ready:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu %s: wait for mirror of %s (%d of %d bytes): %w", p.Dir, node, s.Offset, s.Len, ctx.Err())
		case <-t.C:
		case <-p.h.exited:
			return fmt.Errorf("qemu %s: wait for mirror: %w: pid %d exited", p.Dir, ErrNotRunning, p.Pid)
		}
	}
}

// CompleteMirror ends the ready mirror of node so that the target holds
// an exact copy of the disk, and disconnects from the target. Call it
// with the guest paused (StatePreSwitchover), so nothing is written
// afterwards. It cancels the job gently (block-job-cancel without force,
// which for a ready mirror first drains it), waits for the job to end,
// dismisses it and removes the NBD client node. The error wraps
// ErrMirrorFailed if the job is missing, not ready, or failed.
func (p *Process) CompleteMirror(ctx context.Context, node string) error {
	if err := p.checkNode("complete mirror", node); err != nil {
		return err
	}
	job := mirrorName(node)
	s, err := p.MirrorStatus(ctx, node)
	if err != nil {
		return err
	}
	switch {
	case !s.Found:
		return fmt.Errorf("qemu %s: %w: no mirror job for %s", p.Dir, ErrMirrorFailed, node)
	case s.Error != "":
		return fmt.Errorf("qemu %s: %w: %s: %s (%s)", p.Dir, ErrMirrorFailed, node, s.Error, s.Status)
	case s.ended():
		// Gently ended by an earlier call that did not get to dismiss it.
	case !s.Ready:
		return fmt.Errorf("qemu %s: %w: mirror of %s is not ready (%s, %d of %d bytes)", p.Dir, ErrMirrorFailed, node, s.Status, s.Offset, s.Len)
	default:
		if err := p.qmp.Execute(ctx, "block-job-cancel", map[string]any{"device": job}, nil); err != nil {
			return fmt.Errorf("qemu %s: complete mirror of %s: %w", p.Dir, node, err)
		}
		if s, err = p.waitJobEnded(ctx, node); err != nil {
			return err
		}
		if s.Error != "" {
			return fmt.Errorf("qemu %s: %w: %s: %s", p.Dir, ErrMirrorFailed, node, s.Error)
		}
	}
	if err := p.dismissJob(ctx, node); err != nil {
		return err
	}
	if err := p.qmp.Execute(ctx, "blockdev-del", map[string]any{"node-name": job}, nil); err != nil {
		return fmt.Errorf("qemu %s: complete mirror of %s: %w", p.Dir, node, err)
	}
	p.log.Info("qemu disk mirror completed", "pid", p.Pid, "dir", p.Dir, "node", node)
	return nil
}

// AbortMirror stops the mirror of node at once, if any (the target's copy
// is then incomplete), and removes the NBD client node. With nothing to
// stop or remove it does nothing, so it is safe to call on any failure.
func (p *Process) AbortMirror(ctx context.Context, node string) error {
	if err := p.checkNode("abort mirror", node); err != nil {
		return err
	}
	job := mirrorName(node)
	s, err := p.MirrorStatus(ctx, node)
	if err != nil {
		return err
	}
	if s.Found {
		if !s.ended() {
			err := p.qmp.Execute(ctx, "block-job-cancel", map[string]any{"device": job, "force": true}, nil)
			if err != nil {
				// It may have ended meanwhile; the wait below tells.
				p.log.Debug("qemu: cancel mirror", "dir", p.Dir, "node", node, "err", err)
			}
			if s, err = p.waitJobEnded(ctx, node); err != nil {
				return err
			}
		}
		if s.Found {
			if err := p.dismissJob(ctx, node); err != nil {
				return err
			}
		}
	}
	exists, err := p.nodeExists(ctx, job)
	if err != nil || !exists {
		return err
	}
	if err := p.qmp.Execute(ctx, "blockdev-del", map[string]any{"node-name": job}, nil); err != nil {
		return fmt.Errorf("qemu %s: abort mirror of %s: %w", p.Dir, node, err)
	}
	p.log.Info("qemu disk mirror aborted", "pid", p.Pid, "dir", p.Dir, "node", node)
	return nil
}

// waitJobEnded polls until the mirror job of node has ended or is gone
// and returns its last status.
func (p *Process) waitJobEnded(ctx context.Context, node string) (MirrorStatus, error) {
	t := time.NewTicker(mirrorPoll)
	defer t.Stop()
	for {
		s, err := p.MirrorStatus(ctx, node)
		if err != nil || !s.Found || s.ended() {
			return s, err
		}
		select {
		case <-ctx.Done():
			return s, fmt.Errorf("qemu %s: wait for mirror job of %s to end (%s): %w", p.Dir, node, s.Status, ctx.Err())
		case <-t.C:
		case <-p.h.exited:
			return s, fmt.Errorf("qemu %s: wait for mirror job: %w: pid %d exited", p.Dir, ErrNotRunning, p.Pid)
		}
	}
}

func (p *Process) dismissJob(ctx context.Context, node string) error {
	if err := p.qmp.Execute(ctx, "job-dismiss", map[string]any{"id": mirrorName(node)}, nil); err != nil {
		return fmt.Errorf("qemu %s: dismiss mirror job of %s: %w", p.Dir, node, err)
	}
	return nil
}

// nodeExists reports whether a block node named name exists.
func (p *Process) nodeExists(ctx context.Context, name string) (bool, error) {
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	if err := p.qmp.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return false, fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	for _, n := range nodes {
		if n.NodeName == name {
			return true, nil
		}
	}
	return false, nil
}
