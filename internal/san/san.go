// Package san is the storage-server side of Shoal's iSCSI SAN, on Debian's
// tgt (tgtd, fully in user space). Each volume is a sparse raw file
// <dir>/vol-<id>.img served as LUN 1 of its own target
// iqn.2026-12.io.shoal:vol-<id>. One CHAP account is bound to every
// target, and each target admits only the initiators the caller allows
// (iqn.2026-12.io.shoal:host-<hostname>); fencing takes a host off a
// target's list and ends its sessions there.
//
// tgtd keeps its configuration in memory only: the package runs it as a
// child (Daemon) and rebuilds every target from the files of dir and the
// access lists the caller keeps (SAN.Rebuild). The package speaks tgtd's
// management protocol itself (what tgtadm sends), so that the CHAP secret
// is never on a command line.
package san

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool"
)

// IQNPrefix starts every target and initiator name Shoal makes.
const IQNPrefix = "iqn.2026-12.io.shoal:"

// TargetName is the iSCSI target of volume id.
func TargetName(id string) string { return IQNPrefix + "vol-" + id }

// InitiatorName is the iSCSI initiator name of host.
func InitiatorName(host string) string { return IQNPrefix + "host-" + host }

// LUN is the logical unit number of every volume in its target.
const LUN = 1

// Config is a SAN's settings.
type Config struct {
	Dir        string // holds the volumes' files; its filesystem is the pool
	CHAPUser   string // the incoming CHAP account bound to every target
	CHAPSecret string // 12-255 printable ASCII characters
	Log        *slog.Logger
}

// SAN manages the targets of one tgtd. It implements pool.Driver and
// pool.Fencer. Its methods are safe to call concurrently (they run one at
// a time) and to repeat after a crash at any point.
type SAN struct {
	cfg Config
	adm admin
	mu  sync.Mutex
}

var (
	_ pool.Driver = (*SAN)(nil)
	_ pool.Fencer = (*SAN)(nil)
)

// New returns the SAN of the volumes in cfg.Dir served by d, and puts the
// CHAP account into d. Call Rebuild next: d may have been started afresh.
func New(ctx context.Context, cfg Config, d *Daemon) (*SAN, error) {
	if cfg.Log == nil {
		return nil, errors.New("san: Config.Log is required")
	}
	if err := checkCHAP(cfg.CHAPUser, cfg.CHAPSecret); err != nil {
		return nil, err
	}
	if st, err := os.Stat(cfg.Dir); err != nil || !st.IsDir() {
		return nil, api.Errorf(api.ErrInvalid, "SAN dir %s is not a directory", cfg.Dir)
	}
	s := &SAN{cfg: cfg, adm: d.adm}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ensureAccount(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// checkCHAP refuses an account tgtd or an initiator could misread: tgtd
// splits its parameters at ',' (the user may hold none) and RFC 3720
// wants secrets of 12 bytes or more.
func checkCHAP(user, secret string) error {
	if user == "" || len(user) > 255 || strings.ContainsAny(user, ",= ") || !printable(user) {
		return api.Errorf(api.ErrInvalid, "CHAP user must be 1-255 printable characters without ',', '=' or spaces")
	}
	if len(secret) < 12 || len(secret) > 255 || !printable(secret) {
		return api.Errorf(api.ErrInvalid, "CHAP secret must be 12-255 printable ASCII characters")
	}
	return nil
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// Create makes v's backing file (unless it exists with v's size) and its
// target, which admits no initiator until SetAllowed.
func (s *SAN) Create(ctx context.Context, v pool.Volume) error {
	if err := checkID(v.ID); err != nil {
		return err
	}
	if err := checkSize(v.SizeBytes); err != nil {
		return err
	}
	return s.locked(ctx, func(ts []target) error {
		if err := s.ensureFile(ctx, v); err != nil {
			return err
		}
		_, err := s.ensureTarget(ctx, &ts, v.ID)
		return err
	})
}

// ensureFile makes v's file unless it exists with v's size.
func (s *SAN) ensureFile(ctx context.Context, v pool.Volume) error {
	st, err := os.Stat(s.file(v.ID))
	switch {
	case err == nil && st.Size() != v.SizeBytes:
		return api.Errorf(api.ErrConflict, "volume %s exists with size %s, not %s",
			v.ID, api.FormatSize(st.Size()), api.FormatSize(v.SizeBytes))
	case errors.Is(err, os.ErrNotExist):
		if err := s.fits(v.SizeBytes, "volume "+v.ID); err != nil {
			return err
		}
		if err := s.makeFile(ctx, v); err != nil {
			return err
		}
		s.cfg.Log.Info("volume file made", "id", v.ID, "size", v.SizeBytes)
	case err != nil:
		return fmt.Errorf("san: %w", err)
	}
	return nil
}

// locked runs fn holding s.mu, with tgtd's targets listed.
func (s *SAN) locked(ctx context.Context, fn func(ts []target) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ts, err := s.targets(ctx)
	if err != nil {
		return err
	}
	return fn(ts)
}

// Delete removes the target of id (ending any session on it) and then
// its file: there is never a target without its file.
func (s *SAN) Delete(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	return s.locked(ctx, func(ts []target) error {
		if t := findTarget(ts, id); t != nil {
			if err := s.deleteTarget(ctx, t.TID); err != nil {
				return err
			}
		}
		if err := os.Remove(s.file(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("san: %w", err)
		}
		_ = os.Remove(s.tmp(id))
		s.cfg.Log.Info("volume deleted", "id", id)
		return syncDir(s.cfg.Dir)
	})
}

// Resize grows the file of id to size bytes and has tgtd reopen it, so
// that READ CAPACITY answers the new size (an initiator sees it at its
// next read of the capacity: QEMU's block_resize does one).
//
// tgtd (1.0.85) reads a LUN's size only when it opens the file, and its
// reopen closes the old descriptor before opening the new: a read or
// write that one of its I/O threads runs in those microseconds fails
// with EBADF (about one resize in a thousand under continuous writes).
func (s *SAN) Resize(ctx context.Context, id string, size int64) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := checkSize(size); err != nil {
		return err
	}
	return s.locked(ctx, func(ts []target) error {
		if err := s.growFile(id, size); err != nil {
			return err
		}
		t, err := s.ensureTarget(ctx, &ts, id)
		if err != nil {
			return err
		}
		if err := s.reopenLUN(ctx, t.TID, id); err != nil {
			return err
		}
		s.cfg.Log.Info("volume resized", "id", id, "size", size)
		return nil
	})
}

// growFile grows the file of id to size, if it fits.
func (s *SAN) growFile(id string, size int64) error {
	st, err := os.Stat(s.file(id))
	if errors.Is(err, os.ErrNotExist) {
		return api.Errorf(api.ErrNotFound, "volume %s not found on the SAN", id)
	} else if err != nil {
		return fmt.Errorf("san: %w", err)
	}
	if size < st.Size() {
		return api.Errorf(api.ErrInvalid, "volume %s is %s: it can grow, not shrink to %s",
			id, api.FormatSize(st.Size()), api.FormatSize(size))
	}
	if size > st.Size() {
		if err := s.fits(size-st.Size(), "growing volume "+id); err != nil {
			return err
		}
		return truncateFile(s.file(id), size)
	}
	return nil
}

// Capacity is the pool's space (see capacity: volumes' sizes count whole).
func (s *SAN) Capacity(ctx context.Context) (pool.Capacity, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.capacity()
}

// SetAllowed makes hosts the only initiators the target of id admits,
// and ends the sessions there of any other initiator.
func (s *SAN) SetAllowed(ctx context.Context, id string, hosts []string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := checkHosts(hosts); err != nil {
		return err
	}
	return s.locked(ctx, func(ts []target) error {
		t := findTarget(ts, id)
		if t == nil {
			return api.Errorf(api.ErrNotFound, "volume %s has no target on the SAN", id)
		}
		return s.setACL(ctx, *t, hosts)
	})
}

// Fence takes host off the access lists of the targets of ids and ends
// its sessions on them: its next login is refused, and I/O in flight
// on the ended sessions never reaches the LUN. Absent volumes are no error.
func (s *SAN) Fence(ctx context.Context, host string, ids []string) error {
	return s.fence(ctx, host, ids, false)
}

// Unfence puts host back on the access lists of the targets of ids.
// Call it only once the host's QEMUs that had these volumes open are
// gone (the host was restarted or its QEMUs killed): a fenced QEMU's
// libiscsi keeps retrying its login with its writes queued, and they
// land as soon as it is admitted again.
func (s *SAN) Unfence(ctx context.Context, host string, ids []string) error {
	return s.fence(ctx, host, ids, true)
}

func (s *SAN) fence(ctx context.Context, host string, ids []string, allow bool) error {
	if err := checkHosts([]string{host}); err != nil {
		return err
	}
	for _, id := range ids {
		if err := checkID(id); err != nil {
			return err
		}
	}
	return s.locked(ctx, func(ts []target) error {
		return s.fenceLocked(ctx, ts, host, ids, allow)
	})
}

func (s *SAN) fenceLocked(ctx context.Context, ts []target, host string, ids []string, allow bool) error {
	iqn := InitiatorName(host)
	var fenced []int
	for _, id := range ids {
		t := findTarget(ts, id)
		if t == nil {
			s.cfg.Log.Warn("no target to fence or unfence", "id", id, "host", host)
			continue
		}
		if allow {
			if err := s.bindInitiator(ctx, t.TID, iqn); err != nil {
				return err
			}
			continue
		}
		if err := s.unbindInitiator(ctx, t.TID, iqn); err != nil {
			return err
		}
		fenced = append(fenced, t.TID)
	}
	if len(fenced) > 0 {
		if err := s.dropSessions(ctx, fenced, map[string]bool{iqn: true}); err != nil {
			return err
		}
		s.cfg.Log.Info("host fenced at the SAN", "host", host, "volumes", ids)
	} else if allow {
		s.cfg.Log.Info("host unfenced at the SAN", "host", host, "volumes", ids)
	}
	return nil
}

// Rebuild makes tgtd serve exactly the volumes whose files are in dir:
// it removes half-made files, removes targets of Shoal's whose file is
// gone, and gives every volume its target, LUN, CHAP binding and the
// access list access[id] holds (host names; a volume absent from access
// admits nobody). Call it after every start of tgtd; it is also safe on
// a running one.
func (s *SAN) Rebuild(ctx context.Context, access map[string][]string) error {
	for id, hosts := range access {
		if err := checkID(id); err != nil {
			return err
		}
		if err := checkHosts(hosts); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.removeTemps(); err != nil {
		return err
	}
	if err := s.ensureAccount(ctx); err != nil {
		return err
	}
	vols, err := s.Volumes(ctx)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, v := range vols {
		have[v.ID] = true
	}
	ts, err := s.targets(ctx)
	if err != nil {
		return err
	}
	for _, t := range ts {
		if id, ok := volumeOfTarget(t.Name); ok && !have[id] {
			if err := s.deleteTarget(ctx, t.TID); err != nil {
				return err
			}
			s.cfg.Log.Info("removed a target without its file", "target", t.Name)
		}
	}
	for _, v := range vols {
		t, err := s.ensureTarget(ctx, &ts, v.ID)
		if err != nil {
			return err
		}
		if err := s.setACL(ctx, t, access[v.ID]); err != nil {
			return err
		}
	}
	s.cfg.Log.Info("SAN rebuilt", "volumes", len(vols))
	return nil
}

// Sessions says which hosts have a session on each volume's target now
// (volume id to host names, sorted; volumes without sessions left out).
func (s *SAN) Sessions(ctx context.Context) (map[string][]string, error) {
	out := map[string][]string{}
	err := s.locked(ctx, func(ts []target) error {
		for _, t := range ts {
			id, ok := volumeOfTarget(t.Name)
			if !ok {
				continue
			}
			text, err := s.adm.do(ctx, request{Mode: modeConnection, Op: opShow, TID: int32(t.TID)})
			if err != nil {
				return fmt.Errorf("san: list sessions of %s: %w", t.Name, err)
			}
			conns, err := parseConns(text)
			if err != nil {
				return err
			}
			for _, c := range conns {
				host, ok := strings.CutPrefix(c.Initiator, IQNPrefix+"host-")
				if ok && !slices.Contains(out[id], host) {
					out[id] = append(out[id], host)
				}
			}
			slices.Sort(out[id])
		}
		return nil
	})
	return out, err
}

// checkHosts refuses host names that are not Shoal's (DNS labels).
func checkHosts(hosts []string) error {
	for _, h := range hosts {
		if err := api.ValidateName("host", h); err != nil {
			return err
		}
	}
	return nil
}
