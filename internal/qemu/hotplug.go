package qemu

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/qemu/qmp"
)

// Hot-plug of disks into a running QEMU, over QMP. Every method is
// idempotent, so that a caller that crashed half-way calls it again and
// converges: AttachDisk finds what an earlier call added, DetachDisk
// removes whatever is left of a disk (device, block node, secret).
// Errors wrap the kinds of internal/api with a one-line message.

// detachPoll is how often DetachDisk looks whether the guest let go.
const detachPoll = 50 * time.Millisecond

// AttachedDisk is a disk as the running QEMU has it.
type AttachedDisk struct {
	Node      string // block node name
	Device    string // QEMU id of its virtio-blk device
	Slot      int    // hot-plug slot; 0 = on pcie.0 (boot disk, seed)
	SizeBytes int64  // virtual size, as the guest sees it
	ReadOnly  bool
}

// opError is an error of an api kind, with a one-line message, that also
// unwraps to its cause.
type opError struct {
	kind, cause error
	msg         string
}

func (e *opError) Error() string { return e.msg }
func (e *opError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.cause}
}

// fail returns an error of kind about disk node; cause (may be nil) is
// appended on the same line.
func (p *Process) fail(kind error, op, node string, cause error, format string, a ...any) error {
	msg := fmt.Sprintf("qemu: %s %s: %s", op, node, fmt.Sprintf(format, a...))
	if cause != nil {
		var qe *qmp.Error
		if errors.As(cause, &qe) {
			msg += ": " + qe.Desc
		} else {
			msg += ": " + cause.Error()
		}
		if errors.Is(cause, qmp.ErrClosed) || errors.Is(cause, context.Canceled) || errors.Is(cause, context.DeadlineExceeded) {
			kind = api.ErrUnavailable
		}
	}
	msg = strings.Join(strings.Fields(msg), " ")
	return &opError{kind: kind, cause: cause, msg: msg}
}

// peripherals returns the ids of the devices given one, with their QOM
// type ("child<virtio-blk-pci>", ...).
func (p *Process) peripherals(ctx context.Context) (map[string]string, error) {
	return p.qomChildren(ctx, "/machine/peripheral")
}

func (p *Process) qomChildren(ctx context.Context, path string) (map[string]string, error) {
	var props []struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}
	if err := p.qmp.Execute(ctx, "qom-list", map[string]any{"path": path}, &props); err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, pr := range props {
		if strings.HasPrefix(pr.Type, "child<") {
			m[pr.Name] = pr.Type
		}
	}
	return m, nil
}

// slotOf returns the hot-plug slot the device id sits in; 0 if it is
// on pcie.0 (or another bus).
func (p *Process) slotOf(ctx context.Context, id string) (int, error) {
	var bus string
	if err := p.qmp.Execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/" + id, "property": "parent_bus"}, &bus); err != nil {
		return 0, err
	}
	// A root port's bus is /machine/peripheral/vslotN/vslotN.
	last := bus[strings.LastIndex(bus, "/")+1:]
	if n, err := strconv.Atoi(strings.TrimPrefix(last, "vslot")); err == nil && strings.HasPrefix(last, "vslot") {
		return n, nil
	}
	return 0, nil
}

// blockNodes returns the named block nodes and their virtual sizes.
func (p *Process) blockNodes(ctx context.Context) (map[string]int64, error) {
	var nodes []struct {
		NodeName string `json:"node-name"`
		Image    struct {
			VirtualSize int64 `json:"virtual-size"`
		} `json:"image"`
	}
	if err := p.qmp.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, err
	}
	m := map[string]int64{}
	for _, n := range nodes {
		m[n.NodeName] = n.Image.VirtualSize
	}
	return m, nil
}

// VolumeSlots returns how many hot-plug slots this QEMU has (its
// Config.VolumeSlots), for launching a migration target like it.
func (p *Process) VolumeSlots(ctx context.Context) (int, error) {
	devs, err := p.peripherals(ctx)
	if err != nil {
		return 0, p.fail(api.ErrUnavailable, "count", "hot-plug slots", err, "query")
	}
	return countPorts(devs), nil
}

// Disks lists the disks attached to devices, sorted by node name.
func (p *Process) Disks(ctx context.Context) ([]AttachedDisk, error) {
	var blocks []struct {
		Qdev     string `json:"qdev"`
		Inserted *struct {
			NodeName string `json:"node-name"`
			RO       bool   `json:"ro"`
			Image    struct {
				VirtualSize int64 `json:"virtual-size"`
			} `json:"image"`
		} `json:"inserted"`
	}
	if err := p.qmp.Execute(ctx, "query-block", nil, &blocks); err != nil {
		return nil, p.fail(api.ErrUnavailable, "list", "disks", err, "query")
	}
	var out []AttachedDisk
	for _, b := range blocks {
		id, ok := strings.CutPrefix(strings.TrimSuffix(b.Qdev, "/virtio-backend"), "/machine/peripheral/")
		if b.Inserted == nil || !ok || strings.Contains(id, "/") {
			continue // no medium, or not a device of ours
		}
		slot, err := p.slotOf(ctx, id)
		if err != nil {
			return nil, p.fail(api.ErrUnavailable, "list", "disks", err, "slot of %s", id)
		}
		out = append(out, AttachedDisk{Node: b.Inserted.NodeName, Device: id, Slot: slot,
			SizeBytes: b.Inserted.Image.VirtualSize, ReadOnly: b.Inserted.RO})
	}
	slices.SortFunc(out, func(a, b AttachedDisk) int { return strings.Compare(a.Node, b.Node) })
	return out, nil
}

// AttachDisk hot-plugs d into its slot (d.Slot, 1 to the VM's
// VolumeSlots; d.Node must be given): its secret object if it has one
// (from Secret.Value over QMP, else QEMU reads Secret.File), its block
// nodes (blockdev-add) and its virtio-blk device (device_add). A disk
// already attached in that slot is no error; whatever an interrupted
// earlier attach left is reused. On failure it removes what it added.
// The guest sees a new disk (/sys/block/vdX, serial d.Serial).
//
// QEMU opens the disk as its own user (Config.User): the caller first
// gives it d's file (or Secret.File), as for a launch. QEMU refuses
// device_add while a migration runs: attach before or after.
func (p *Process) AttachDisk(ctx context.Context, d Disk) error {
	node := d.Node
	if node == "" || d.Slot == 0 {
		return p.fail(api.ErrInvalid, "attach", "disk", nil, "a hot-plugged disk needs a node name and a slot")
	}
	d, err := checkDisk(d, 0, MaxVolumeSlots)
	if err != nil {
		return p.fail(api.ErrInvalid, "attach", node, nil, "%v", err)
	}
	devs, err := p.peripherals(ctx)
	if err != nil {
		return p.fail(api.ErrUnavailable, "attach", node, err, "list devices")
	}
	port := SlotID(d.Slot)
	if devs[port] != "child<pcie-root-port>" {
		return p.fail(api.ErrConflict, "attach", node, nil,
			"the VM has no hot-plug slot %d (it has %d; a VM started before volumes gets them at its next start)",
			d.Slot, countPorts(devs))
	}
	dev := deviceID(node)
	for id := range devs {
		if id == port || devs[id] == "child<pcie-root-port>" {
			continue
		}
		slot, err := p.slotOf(ctx, id)
		if err != nil {
			return p.fail(api.ErrUnavailable, "attach", node, err, "slot of %s", id)
		}
		switch {
		case id == dev && slot == d.Slot:
			return nil // attached already
		case id == dev:
			return p.fail(api.ErrConflict, "attach", node, nil, "it is attached in slot %d, not %d", slot, d.Slot)
		case slot == d.Slot:
			return p.fail(api.ErrConflict, "attach", node, nil, "slot %d holds %s", d.Slot, id)
		}
	}

	var undo []func()
	rollback := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	if s, format, ok := diskSecret(d); ok {
		added, err := p.addSecret(ctx, node, secretObject(node, s, format))
		if err != nil {
			return p.fail(api.ErrUnavailable, "attach", node, err, "add its secret")
		}
		if added {
			undo = append(undo, func() { p.delObject(node) })
		}
	}
	nodes, err := p.blockNodes(ctx)
	if err != nil {
		rollback()
		return p.fail(api.ErrUnavailable, "attach", node, err, "list block nodes")
	}
	if _, ok := nodes[node]; !ok {
		if err := p.qmp.Execute(ctx, "blockdev-add", blockdevOf(d), nil); err != nil {
			rollback()
			return p.fail(api.ErrUnavailable, "attach", node, err, "open")
		}
		undo = append(undo, func() { p.delNode(node) })
	}
	if err := p.qmp.Execute(ctx, "device_add", deviceProps(d, false), nil); err != nil {
		rollback()
		return p.fail(api.ErrConflict, "attach", node, err, "add device %s", dev)
	}
	p.log.Info("disk attached", "pid", p.Pid, "dir", p.Dir, "node", node, "slot", d.Slot)
	return nil
}

// countPorts counts the hot-plug slots' root ports among devs.
func countPorts(devs map[string]string) int {
	n := 0
	for id, t := range devs {
		if t == "child<pcie-root-port>" && strings.HasPrefix(id, "vslot") {
			n++
		}
	}
	return n
}

// addSecret adds the secret object of node (object-add args) unless it
// exists; added says whether it did.
func (p *Process) addSecret(ctx context.Context, node string, args map[string]any) (added bool, err error) {
	objs, err := p.qomChildren(ctx, "/objects")
	if err != nil {
		return false, err
	}
	if _, ok := objs[secretID(node)]; ok {
		return false, nil
	}
	if err := p.qmp.Execute(ctx, "object-add", args, nil); err != nil {
		return false, err
	}
	return true, nil
}

// cleanupCtx bounds the removals of a rollback, which run even when the
// caller's context has ended.
func cleanupCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func (p *Process) delNode(node string) {
	ctx, cancel := cleanupCtx()
	defer cancel()
	if err := p.qmp.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil); err != nil {
		p.log.Warn("could not remove block node after a failed attach", "dir", p.Dir, "node", node, "err", err)
	}
}

func (p *Process) delObject(node string) {
	ctx, cancel := cleanupCtx()
	defer cancel()
	if err := p.qmp.Execute(ctx, "object-del", map[string]any{"id": secretID(node)}, nil); err != nil {
		p.log.Warn("could not remove secret object after a failed attach", "dir", p.Dir, "node", node, "err", err)
	}
}

// DetachDisk hot-unplugs the disk of node: it asks the guest to release
// its device (device_del) and waits up to timeout for QEMU to remove it
// (QEMU's DEVICE_DELETED; the device tree is polled, so that no other
// reader of the QMP events is needed), then removes its block nodes
// (blockdev-del) and its secret object (object-del). What is already
// gone is skipped, so a repeated or resumed detach is no error. If the
// guest does not let go in time (its OS is not running, or holds the
// disk), the error is of kind api.ErrConflict and the request stays
// pending in QEMU: a later DetachDisk waits for it again.
func (p *Process) DetachDisk(ctx context.Context, node string, timeout time.Duration) error {
	if !nodeRE.MatchString(node) {
		return p.fail(api.ErrInvalid, "detach", node, nil, "node name: want a letter then up to 26 of A-Z a-z 0-9 _ . -")
	}
	dev := deviceID(node)
	deadline := time.Now().Add(timeout)
	devs, err := p.peripherals(ctx)
	if err != nil {
		return p.fail(api.ErrUnavailable, "detach", node, err, "list devices")
	}
	_, did := devs[dev]
	if did {
		err := p.qmp.Execute(ctx, "device_del", map[string]any{"id": dev}, nil)
		if err != nil && !qmpErrorSays(err, "already in the process of unplug") {
			return p.fail(api.ErrConflict, "detach", node, err, "remove device %s", dev)
		}
		if err := p.waitDeviceGone(ctx, node, dev, timeout); err != nil {
			return err
		}
	}
	nodes, err := p.blockNodes(ctx)
	if err != nil {
		return p.fail(api.ErrUnavailable, "detach", node, err, "list block nodes")
	}
	if _, ok := nodes[node]; ok {
		if err := p.closeNode(ctx, node, deadline); err != nil {
			return err
		}
		did = true
	}
	objs, err := p.qomChildren(ctx, "/objects")
	if err != nil {
		return p.fail(api.ErrUnavailable, "detach", node, err, "list objects")
	}
	if _, ok := objs[secretID(node)]; ok {
		if err := p.qmp.Execute(ctx, "object-del", map[string]any{"id": secretID(node)}, nil); err != nil {
			return p.fail(api.ErrConflict, "detach", node, err, "remove its secret")
		}
		did = true
	}
	if did {
		p.log.Info("disk detached", "pid", p.Pid, "dir", p.Dir, "node", node)
	}
	return nil
}

// qmpErrorSays reports whether err is QEMU's error reply saying text.
func qmpErrorSays(err error, text string) bool {
	var qe *qmp.Error
	return errors.As(err, &qe) && strings.Contains(qe.Desc, text)
}

// closeNode removes the block node (blockdev-del). QEMU drops a removed
// device's hold on it a moment after the device has gone from the
// device tree (when the device is finalized), so "in use" is retried
// until deadline, and for a second at least.
func (p *Process) closeNode(ctx context.Context, node string, deadline time.Time) error {
	if least := time.Now().Add(time.Second); deadline.Before(least) {
		deadline = least
	}
	for {
		err := p.qmp.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
		if err == nil {
			return nil
		}
		if !qmpErrorSays(err, "is in use") || time.Now().After(deadline) {
			return p.fail(api.ErrConflict, "detach", node, err, "close")
		}
		p.log.Debug("block node still in use after its device went; retrying", "dir", p.Dir, "node", node)
		select {
		case <-time.After(detachPoll):
		case <-ctx.Done():
			return p.fail(api.ErrUnavailable, "detach", node, ctx.Err(), "close")
		}
	}
}

func (p *Process) waitDeviceGone(ctx context.Context, node, dev string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(detachPoll)
	defer tick.Stop()
	for {
		devs, err := p.peripherals(ctx)
		if err != nil {
			return p.fail(api.ErrUnavailable, "detach", node, err, "list devices")
		}
		if _, ok := devs[dev]; !ok {
			return nil
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			return p.fail(api.ErrConflict, "detach", node, nil,
				"the guest did not release the disk within %s (its OS must be running and not hold the disk); the request stays pending, detach again to wait more",
				timeout)
		case <-ctx.Done():
			return p.fail(api.ErrUnavailable, "detach", node, ctx.Err(), "wait for the guest to release the disk")
		case <-p.h.exited:
			return p.fail(api.ErrUnavailable, "detach", node, ErrNotRunning, "qemu exited")
		}
	}
}

// GrowDisk grows the disk of node to size bytes (block_resize), a
// multiple of 512; the guest sees the new size at once. Its size already
// is no error; a smaller size is refused. An iSCSI LUN must be grown on
// the target first (QEMU then reads its new capacity); QEMU grows a file
// or an RBD image itself.
func (p *Process) GrowDisk(ctx context.Context, node string, size int64) error {
	if !nodeRE.MatchString(node) {
		return p.fail(api.ErrInvalid, "grow", node, nil, "node name: want a letter then up to 26 of A-Z a-z 0-9 _ . -")
	}
	if size <= 0 || size%512 != 0 {
		return p.fail(api.ErrInvalid, "grow", node, nil, "size %d: want a positive multiple of 512 bytes", size)
	}
	nodes, err := p.blockNodes(ctx)
	if err != nil {
		return p.fail(api.ErrUnavailable, "grow", node, err, "list block nodes")
	}
	cur, ok := nodes[node]
	switch {
	case !ok:
		return p.fail(api.ErrNotFound, "grow", node, nil, "no such disk")
	case size == cur:
		return nil
	case size < cur:
		return p.fail(api.ErrInvalid, "grow", node, nil, "size %d is below its %d bytes: a disk only grows", size, cur)
	}
	if err := p.qmp.Execute(ctx, "block_resize", map[string]any{"node-name": node, "size": size}, nil); err != nil {
		return p.fail(api.ErrConflict, "grow", node, err, "resize to %d bytes", size)
	}
	p.log.Info("disk grown", "pid", p.Pid, "dir", p.Dir, "node", node, "from", cur, "to", size)
	return nil
}
