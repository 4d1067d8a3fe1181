package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/atomicfile"
	"github.com/shoalvm/shoal/internal/cloudinit"
	"github.com/shoalvm/shoal/internal/crashpoint"
	"github.com/shoalvm/shoal/internal/image"
	"github.com/shoalvm/shoal/internal/netdev"
	"github.com/shoalvm/shoal/internal/qemu"
	"github.com/shoalvm/shoal/internal/storage"
)

func (a *Agent) pool(name string) (storage.Pool, error) {
	for _, p := range a.cfg.Pools {
		if p.Name == name {
			return p, nil
		}
	}
	return storage.Pool{}, api.Errorf(api.ErrNotFound, "storage pool %q does not exist on host %s", name, a.cfg.Host)
}

// ensureFiles makes the VM's state dir, disk and cloud-init seed if they
// are missing. Each file appears atomically, so a crash leaves either the
// whole file or a temp file that the next pass replaces.
func (w *worker) ensureFiles(ctx context.Context, s *api.VMSpec) error {
	dir := w.a.vmDir(s.ID)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("vm state dir: %w", err)
	}
	meta := filepath.Join(dir, "vm.json")
	if missing, err := absent(meta); err != nil {
		return err
	} else if missing {
		b, _ := json.Marshal(s)
		if err := writeAtomic(meta, b); err != nil {
			return err
		}
	}
	if s.BootVolume != nil {
		// Its first disk is a volume, made with it: only the image's
		// kernel is needed here.
		if _, err := w.a.ensureImage(ctx, s.Image, nil); err != nil {
			return err
		}
		return w.ensureSeed(ctx, s)
	}
	pool, err := w.a.pool(s.Pool)
	if err != nil {
		return err
	}
	disk := pool.DiskPath(s.ID)
	newDisk, err := absent(disk)
	if err != nil {
		return err
	}
	var im *api.Image // the image as it is now, for a new disk
	if newDisk {
		cur, err := w.a.cp.Image(ctx, s.Image)
		if err != nil {
			return err
		}
		im = &cur
	}
	// The image (kernel too) must be on this host even when the disk
	// exists already, as after a move to this host on a shared pool.
	base, err := w.a.ensureImage(ctx, s.Image, im)
	if err != nil {
		return err
	}
	if newDisk {
		if pool.Shared {
			// Every host must find the overlay's base at the same path.
			shared := pool.ImageBase(s.Image, image.Version(*im))
			if err := storage.EnsureCopy(base, shared); err != nil {
				return err
			}
			base = shared
		}
		if err := storage.CreateOverlay(ctx, base, disk, s.DiskBytes); err != nil {
			return err
		}
		crashpoint.Hit("agent-create-after-disk")
	}
	// No other VM's QEMU may read the disk, even before this VM's QEMU
	// is first given it (qemu-img makes it readable by all).
	if err := os.Chmod(disk, 0o600); err != nil {
		return fmt.Errorf("vm disk: %w", err)
	}
	return w.ensureSeed(ctx, s)
}

// ensureSeed makes the VM's cloud-init seed if it is missing.
func (w *worker) ensureSeed(ctx context.Context, s *api.VMSpec) error {
	dir := w.a.vmDir(s.ID)
	seed := filepath.Join(dir, "seed.iso")
	if missing, err := absent(seed); err != nil {
		return err
	} else if missing {
		n, err := w.a.cp.Network(ctx, s.Network)
		if err != nil {
			return err
		}
		p, err := netip.ParsePrefix(n.Subnet)
		if err != nil {
			return fmt.Errorf("network %s: bad subnet: %w", n.Name, err)
		}
		if err := cloudinit.WriteSeed(ctx, seed, cloudinit.Seed{
			InstanceID: s.ID, Hostname: s.Name, MAC: s.MAC, Address: fmt.Sprintf("%s/%d", s.IP, p.Bits()),
			Gateway: n.Gateway, UserData: []byte(s.UserData),
		}); err != nil {
			return fmt.Errorf("cloud-init seed: %w", err)
		}
	}
	return nil
}

// start launches the VM's QEMU, once the control plane confirms that
// the VM is still this host's and the host's lease holds (the fencing
// check: a VM given to another host is never started here).
func (w *worker) start(ctx context.Context, s *api.VMSpec) error {
	if err := w.a.cp.ClaimStart(ctx, w.a.cfg.Host, *s); err != nil {
		return fmt.Errorf("not starting vm %s: %w", s.Name, err)
	}
	uid, err := w.awaitUID(ctx, s)
	if err != nil {
		return err
	}
	c := *s
	c.UID = uid
	p, err := w.launch(ctx, &c, false)
	if err != nil {
		return err
	}
	crashpoint.Hit("agent-start-after-launch")
	w.proc = p
	w.status.StartedAt = w.now()
	w.log.Info("vm started", "name", s.Name, "pid", p.Pid, "accel", w.a.cfg.Accel)
	return nil
}

// launch starts QEMU for the VM, or, incoming, a QEMU that waits paused
// for a migration stream. The tap is created here and handed to QEMU as
// an open fd, so it disappears with QEMU and can never be orphaned.
func (w *worker) launch(ctx context.Context, s *api.VMSpec, incoming bool) (*qemu.Process, error) {
	n, err := w.a.cp.Network(ctx, s.Network)
	if err != nil {
		return nil, err
	}
	if err := w.a.EnsureNetwork(ctx, n); err != nil {
		return nil, err
	}
	tap, err := netdev.OpenTap(ctx, netdev.TapName(s.ID), n.Bridge)
	if err != nil {
		return nil, fmt.Errorf("tap for %s: %w", s.Name, err)
	}
	defer tap.Close()
	disk0, err := w.firstDisk(ctx, s)
	if err != nil {
		return nil, err
	}
	dir := w.a.vmDir(s.ID)
	// An incoming VM keeps the size it runs at on the source.
	cpus, mem := s.RunSize()
	cfg := qemu.Config{
		Name: s.Name, UUID: uuidFromID(s.ID), Dir: dir, Accel: w.a.cfg.Accel,
		CPUs: cpus, CPUModel: s.CPUModel, MemoryMiB: int(mem),
		Disks: []qemu.Disk{
			disk0,
			{Path: filepath.Join(dir, "seed.iso"), Format: "raw", ReadOnly: true, Serial: "cidata"},
		},
		NICs:     []qemu.NIC{{MAC: s.MAC, TapFD: tap, ID: "net0"}},
		Paused:   s.Power == api.PowerPaused || incoming,
		Incoming: incoming,
	}
	// A fresh start gets every hot-plug slot; a migration's target the
	// source's count, so that the devices line up.
	cfg.VolumeSlots = api.VolumeSlotLast
	if incoming {
		cfg.PreallocThreads = preallocThreads()
		cfg.VolumeSlots = s.Migration.VolumeSlots
	}
	vols, err := w.volumeDisks(ctx, s)
	if err != nil {
		return nil, err
	}
	var open []string
	sizes := map[string]int64{}
	for i, d := range vols {
		if d.Slot <= cfg.VolumeSlots {
			cfg.Disks = append(cfg.Disks, d)
			open = append(open, s.Volumes[i].ID)
			sizes[s.Volumes[i].ID] = s.Volumes[i].SizeBytes
		}
	}
	img, err := w.a.cp.Image(ctx, s.Image)
	if err != nil {
		return nil, err
	}
	if img.Kernel {
		imgDir := filepath.Join(w.a.cfg.ImageDir, s.Image)
		cfg.Kernel, cfg.Initrd, cfg.Cmdline = filepath.Join(imgDir, "vmlinuz"), filepath.Join(imgDir, "initrd.img"), img.Cmdline
	}
	if s.UID != 0 {
		cfg.User = qemuUser(s)
		if err := w.giveLaunchFiles(s, cfg); err != nil {
			return nil, fmt.Errorf("start %s: %w", s.Name, err)
		}
	} else {
		// Only the migration of a VM started before QEMU was confined:
		// it stays unconfined until its next start (see awaitUID).
		w.log.Warn("QEMU runs as root: the VM has no QEMU user yet; it gets one on its next start", "incoming", incoming)
	}
	p, err := qemu.Launch(ctx, w.log, w.a.cfg.QEMU, cfg)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", s.Name, err)
	}
	w.size = qemu.Size{CPUs: cpus, MemoryMiB: mem}
	w.slots, w.open, w.sizes = cfg.VolumeSlots, open, sizes
	return p, nil
}

// ensureImage brings image name to this host if it is missing, and
// returns the path of its disk. With im (the image as it is now, for a
// new disk), a copy here of a deleted image of the same name, which no
// VM can use, is first dropped (see image.Stale). One worker at a time
// per image, so that none drops a copy another has just fetched.
func (a *Agent) ensureImage(ctx context.Context, name string, im *api.Image) (string, error) {
	mu := a.imageLock(name)
	mu.Lock()
	defer mu.Unlock()
	dir := filepath.Join(a.cfg.ImageDir, name)
	if im != nil && image.Stale(dir, *im) {
		a.log.Info("dropping the copy of a deleted image of the same name", "image", name, "dir", dir)
		if err := os.RemoveAll(dir); err != nil {
			return "", fmt.Errorf("image %q: drop the old copy: %w", name, err)
		}
	}
	base := filepath.Join(dir, "disk.qcow2")
	if missing, err := absent(base); err != nil {
		return "", err
	} else if missing {
		if err := a.cp.FetchImage(ctx, name, dir); err != nil {
			return "", fmt.Errorf("bring image %q to host %s: %w", name, a.cfg.Host, err)
		}
	}
	return base, nil
}

// preallocThreads is how many threads a migration's target QEMU zeroes
// the guest's memory with at launch. The source waits for that launch
// anyway; zeroed then, on every core, the memory need not be zeroed
// page by page on the path of the stream, by the one thread that reads
// it, nor at the switch, where a page the guest first wrote late in the
// migration would lengthen its pause. In the lab, where that zeroing is
// slow, it made migrations a tenth shorter and ended the pauses of 150
// to 340 ms that a quarter to a third of them had.
func preallocThreads() int { return min(runtime.NumCPU(), 8) }

// EnsureNetwork makes the network's bridge on this host, with the host's
// address on it and the uplink in it.
func (a *Agent) EnsureNetwork(ctx context.Context, n api.Network) error {
	addr := a.cfg.BridgeAddr
	if addr == "" {
		subnet, err := netip.ParsePrefix(n.Subnet)
		if err != nil {
			return fmt.Errorf("network %s: bad subnet: %w", n.Name, err)
		}
		addr = fmt.Sprintf("%s/%d", n.Gateway, subnet.Bits())
	}
	if err := netdev.EnsureBridge(ctx, n.Bridge, addr); err != nil {
		return fmt.Errorf("network %s: %w", n.Name, err)
	}
	if a.cfg.Uplink != "" {
		if err := netdev.AttachLink(ctx, a.cfg.Uplink, n.Bridge); err != nil {
			return fmt.Errorf("network %s: %w", n.Name, err)
		}
	}
	return nil
}

// destroy stops the VM's QEMU and removes its files on this host. Disks
// in shared pools are removed only when the VM is being deleted: otherwise
// they belong to whichever host owns the VM now.
func (w *worker) destroy(ctx context.Context, deleting bool) error {
	w.relayStopTarget()
	w.tunnelStop()
	_ = w.stopNBD()
	if w.proc != nil {
		if err := w.proc.Kill(); err != nil {
			w.log.Warn("kill QEMU", "err", err)
		}
		w.close()
	}
	qemu.KillAll(w.log, w.a.vmDir(w.id)) // also a wedged QEMU, or one without a pidfile
	crashpoint.Hit("agent-delete-after-kill")
	for _, p := range w.a.cfg.Pools {
		if p.Shared && !deleting {
			continue
		}
		if err := storage.RemoveDisk(p.DiskPath(w.id)); err != nil {
			return err
		}
	}
	w.markHA(false) // its mark is kept outside its dir
	if err := os.RemoveAll(w.a.vmDir(w.id)); err != nil {
		return fmt.Errorf("remove vm state dir: %w", err)
	}
	crashpoint.Hit("agent-delete-after-files")
	w.log.Info("vm resources removed")
	return nil
}

// absent reports whether path does not exist; any other stat error is an
// error, never a reason to make the file anew over what may be there.
func absent(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, fs.ErrNotExist):
		return true, nil
	}
	return false, fmt.Errorf("check %s: %w", path, err)
}

// writeAtomic writes b to path through a new temporary file beside it.
// Made with O_EXCL, the temporary file is never a link that a VM's QEMU
// put in its own directory (see confine.go), nor is the file read.
func writeAtomic(path string, b []byte) error {
	if err := atomicfile.Write(path, b, 0o640); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// readTrim reads one of the small files the agent keeps beside a VM (its
// last 4 KiB at most), not following a link at its name (see writeAtomic).
func readTrim(p string) string {
	return strings.TrimSpace(string(qemu.ReadTail(4<<10, p)))
}

// qemuLogTail returns the last line QEMU logged, for error messages.
func qemuLogTail(dir string) string {
	lines := strings.Split(strings.TrimSpace(string(qemu.ReadTail(qemu.LogTail, filepath.Join(dir, qemu.LogFile)))), "\n")
	return lines[len(lines)-1]
}

// logCapEvery is how often the console logs are checked against their
// cap: a guest writing flat out overshoots it by what it writes meanwhile.
const logCapEvery = 2 * time.Second

// capLogs keeps the console logs of the VMs on this host under their cap
// (see qemu.CapLog), those of VMs an earlier agent started too.
func (a *Agent) capLogs(ctx context.Context) {
	for ctx.Err() == nil {
		for id := range a.localIDs() {
			path := filepath.Join(a.vmDir(id), qemu.ConsoleLog)
			if rotated, err := qemu.CapLog(path, qemu.ConsoleLogMax); err != nil {
				a.log.Warn("cannot cap the console log", "vm", id, "err", err)
			} else if rotated {
				a.log.Debug("console log rotated", "vm", id)
			}
		}
		sleep(ctx, logCapEvery)
	}
}

// uuidFromID spreads a short VM id into a stable UUID for QEMU's -uuid.
func uuidFromID(id string) string {
	h := fmt.Sprintf("%032x", []byte(id))
	h = (h + strings.Repeat("0", 32))[:32]
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
