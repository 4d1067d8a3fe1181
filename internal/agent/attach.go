package agent

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/atomicfile"
	"github.com/shoalvm/shoal/internal/pool/dir"
	"github.com/shoalvm/shoal/internal/pool/rbd"
	"github.com/shoalvm/shoal/internal/qemu"
	"github.com/shoalvm/shoal/internal/san"
	"github.com/shoalvm/shoal/internal/storage"
)

// A VM's volumes (its spec's Volumes) are disks of its QEMU in the slots
// the spec gives them: on the command line when QEMU starts, hot-plugged
// and unplugged while it runs. The worker keeps which ones its QEMU has
// (open) and reports them, so that a detach frees a volume only once
// QEMU has let it go.

// detachTimeout bounds how long the guest may take to release a disk.
const detachTimeout = 30 * time.Second

// iscsiTimeout is how many seconds libiscsi retries an I/O before it
// fails it to the guest (a host fenced at the SAN must not wait forever).
const iscsiTimeout = 5

// volumeDisk is how this host's QEMU opens the volume of ref for the VM
// of s, and the file its secret goes to ("" if none).
func (w *worker) volumeDisk(ctx context.Context, s *api.VMSpec, ref api.VolumeRef) (qemu.Disk, error) {
	node := qemu.VolumeNode(ref.ID)
	d := qemu.Disk{Node: node, Serial: qemu.VolumeSerial(ref.ID), Slot: ref.Slot}
	if p, err := w.a.pool(ref.Pool); err == nil {
		d.Path, d.Format = dir.Driver{Name: p.Name, Dir: p.Dir}.Path(ref.ID), "qcow2"
		return d, nil
	}
	c, err := w.a.poolConfig(ctx, ref.Pool)
	if err != nil {
		return d, err
	}
	secret := qemu.Secret{File: qemu.SecretFile(w.a.vmDir(s.ID), node)}
	switch {
	case c.Type == api.PoolRBD:
		d.Format = "raw"
		secret.Value = qemu.SecretValue(c.Key)
		d.RBD = &qemu.RBD{Monitors: c.Monitors, Pool: c.RBDPool, Image: rbd.Image(ref.ID), User: c.User, Secret: secret}
		return d, nil
	case c.Type == api.PoolISCSI && c.Server != "":
		d.Format = "raw"
		d.ISCSI = &qemu.ISCSI{Portal: c.Portal, Target: san.TargetName(ref.ID), LUN: san.LUN,
			InitiatorName: san.InitiatorName(w.a.cfg.Host), User: c.CHAPUser, Timeout: iscsiTimeout,
			Secret: qemu.Secret{File: secret.File, Value: qemu.SecretValue(c.CHAPSecret)}}
		return d, nil
	}
	return d, api.Errorf(api.ErrUnavailable, "volume %s: pools of type %s cannot be opened by this host yet", ref.Name, c.Type)
}

// volumeDisks are the disks of s's volumes, their files and secrets
// ready for its QEMU user.
func (w *worker) volumeDisks(ctx context.Context, s *api.VMSpec) ([]qemu.Disk, error) {
	var out []qemu.Disk
	for _, ref := range s.Volumes {
		d, err := w.volumeDisk(ctx, s, ref)
		if err != nil {
			return nil, err
		}
		if err := w.prepareDisk(s, d); err != nil {
			return nil, err
		}
		if d.Path != "" && s.Migration == nil {
			// Grown while the VM was stopped: the file grows now, before
			// any QEMU has it (never on a migration's target, whose
			// source has it open).
			if err := growFile(ctx, d.Path, ref.SizeBytes); err != nil {
				return nil, err
			}
		}
		out = append(out, d)
	}
	return out, nil
}

// growFile grows the qcow2 file at path to size if it is smaller.
func growFile(ctx context.Context, path string, size int64) error {
	cur, err := storage.VirtualSize(ctx, path)
	if err != nil || cur >= size {
		return err
	}
	return storage.Grow(ctx, path, size)
}

// prepareDisk writes d's secret, if it has one, for s's QEMU user only.
// (Files are given to that user with the others: see giveLaunchFiles.)
func (w *worker) prepareDisk(s *api.VMSpec, d qemu.Disk) error {
	var sec *qemu.Secret
	switch {
	case d.ISCSI != nil:
		sec = &d.ISCSI.Secret
	case d.RBD != nil:
		sec = &d.RBD.Secret
	}
	if sec == nil || sec.File == "" {
		return nil
	}
	if err := atomicfile.Write(sec.File, sec.Value, 0o600); err != nil {
		return fmt.Errorf("secret of disk %s: %w", d.Node, err)
	}
	if s.UID != 0 {
		return giveFile(sec.File, s.UID)
	}
	return nil
}

// syncVolumes makes the running QEMU's volumes those of s: it plugs in
// the new ones and unplugs those gone from the spec.
func (w *worker) syncVolumes(ctx context.Context, s *api.VMSpec) error {
	if w.proc == nil || w.slots == 0 {
		return nil // started before volumes: they come at its next start
	}
	want := map[string]api.VolumeRef{}
	for _, ref := range s.Volumes {
		want[ref.ID] = ref
	}
	for _, id := range slices.Clone(w.open) {
		if _, ok := want[id]; ok {
			continue
		}
		if err := w.proc.DetachDisk(ctx, qemu.VolumeNode(id), detachTimeout); err != nil {
			return fmt.Errorf("detach volume %s: %w", id, err)
		}
		w.open = slices.DeleteFunc(w.open, func(o string) bool { return o == id })
		_ = os.Remove(qemu.SecretFile(w.a.vmDir(s.ID), qemu.VolumeNode(id)))
		w.takeBack(id)
		w.log.Info("volume detached", "volume_id", id)
	}
	for _, ref := range s.Volumes {
		if slices.Contains(w.open, ref.ID) {
			if ref.SizeBytes > w.sizes[ref.ID] {
				qctx, cancel := context.WithTimeout(ctx, qmpTimeout)
				err := w.proc.GrowDisk(qctx, qemu.VolumeNode(ref.ID), ref.SizeBytes)
				cancel()
				if err != nil {
					return fmt.Errorf("grow volume %s: %w", ref.Name, err)
				}
				w.sizes[ref.ID] = ref.SizeBytes
				w.log.Info("volume grown", "volume", ref.Name, "size", ref.SizeBytes)
			}
			continue
		}
		if ref.Slot > w.slots {
			w.log.Warn("volume's slot is past the running QEMU's: it is attached at the next start", "volume", ref.Name, "slot", ref.Slot)
			continue
		}
		d, err := w.volumeDisk(ctx, s, ref)
		if err != nil {
			return err
		}
		if err := w.prepareDisk(s, d); err != nil {
			return err
		}
		if d.Path != "" {
			if err := w.giveVolumeFile(s, d.Path); err != nil {
				return err
			}
		}
		qctx, cancel := context.WithTimeout(ctx, qmpTimeout)
		err = w.proc.AttachDisk(qctx, d)
		cancel()
		if err != nil {
			return fmt.Errorf("attach volume %s: %w", ref.Name, err)
		}
		w.open = append(w.open, ref.ID)
		w.sizes[ref.ID] = ref.SizeBytes
		w.log.Info("volume attached", "volume", ref.Name, "slot", ref.Slot)
	}
	return nil
}

// giveVolumeFile gives a volume's file (and its image, if it has one) to
// s's QEMU user, as a launch does for its disks.
func (w *worker) giveVolumeFile(s *api.VMSpec, path string) error {
	chain, err := backingChain(path)
	if err != nil {
		return err
	}
	for _, b := range chain {
		if err := w.a.inImageLibrary(b); err != nil {
			return err
		}
	}
	return giveFiles(s, []string{path}, chain)
}

// takeBack makes a detached volume's file root's again, so that the QEMU
// user that had it cannot open it any more.
func (w *worker) takeBack(id string) {
	for _, p := range w.a.cfg.Pools {
		path := dir.Driver{Name: p.Name, Dir: p.Dir}.Path(id)
		f, err := openNoFollow(path)
		if err != nil {
			continue
		}
		if err := f.Chown(0, 0); err != nil {
			w.log.Warn("cannot take a detached volume back from the VM's QEMU user", "path", path, "err", err)
		}
		f.Close()
	}
}

// readVolumes learns, after a reattach, which volumes the running QEMU
// has and how many slots.
func (w *worker) readVolumes(ctx context.Context) error {
	slots, err := w.proc.VolumeSlots(ctx)
	if err != nil {
		return err
	}
	disks, err := w.proc.Disks(ctx)
	if err != nil {
		return err
	}
	w.slots, w.open, w.sizes = slots, nil, map[string]int64{}
	for _, d := range disks {
		if id, ok := qemu.VolumeOfNode(d.Node); ok {
			w.open = append(w.open, id)
			w.sizes[id] = d.SizeBytes
		}
	}
	return nil
}

// firstDisk is the VM's first disk: its file in its pool, or its boot
// volume.
func (w *worker) firstDisk(ctx context.Context, s *api.VMSpec) (qemu.Disk, error) {
	if s.BootVolume == nil {
		p, err := w.a.pool(s.Pool)
		if err != nil {
			return qemu.Disk{}, err
		}
		return qemu.Disk{Path: p.DiskPath(s.ID), Format: "qcow2", Serial: "disk0"}, nil
	}
	d, err := w.volumeDisk(ctx, s, *s.BootVolume)
	if err != nil {
		return d, err
	}
	d.Node, d.Serial, d.Slot = "disk0", "disk0", 0 // where the first disk always is
	if d.ISCSI != nil {
		d.ISCSI.Secret.File = qemu.SecretFile(w.a.vmDir(s.ID), "disk0")
	}
	if d.RBD != nil {
		d.RBD.Secret.File = qemu.SecretFile(w.a.vmDir(s.ID), "disk0")
	}
	return d, w.prepareDisk(s, d)
}
