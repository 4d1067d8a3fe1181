package san

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Requests to tgtd on targets, LUNs, accounts and sessions. Callers hold
// s.mu: the target list read at the start of an operation stays true.

// volumeOfTarget returns the volume id of a target name of Shoal's.
func volumeOfTarget(name string) (string, bool) {
	id, ok := strings.CutPrefix(name, IQNPrefix+"vol-")
	return id, ok && checkID(id) == nil
}

func findTarget(ts []target, id string) *target {
	name := TargetName(id)
	for i := range ts {
		if ts[i].Name == name {
			return &ts[i]
		}
	}
	return nil
}

// targets lists every target of tgtd.
func (s *SAN) targets(ctx context.Context) ([]target, error) {
	text, err := s.adm.do(ctx, request{Mode: modeTarget, Op: opShow, TID: -1})
	if err != nil {
		return nil, fmt.Errorf("san: list targets: %w", err)
	}
	return parseTargets(text)
}

// ensureAccount adds the CHAP account to tgtd unless it has it. tgtd
// never shows a secret: an account of the same user is taken as this
// one (tgtd is this package's own child, started with the account).
func (s *SAN) ensureAccount(ctx context.Context) error {
	_, err := s.adm.do(ctx, request{Mode: modeAccount, Op: opNew, TID: -1,
		Params: "user=" + s.cfg.CHAPUser + ",password=" + s.cfg.CHAPSecret})
	if err != nil && !isTgt(err, errUserHave) {
		return fmt.Errorf("san: add the CHAP account: %w", err)
	}
	return nil
}

// ensureTarget gives volume id a target with its file as LUN 1 and the
// CHAP account bound, adding what is missing, and returns it. A new
// target is appended to *ts and admits nobody. The account is bound
// before the LUN is added, so that no LUN is ever served without CHAP.
func (s *SAN) ensureTarget(ctx context.Context, ts *[]target, id string) (target, error) {
	t := findTarget(*ts, id)
	if t == nil {
		tid := 1
		for _, o := range *ts {
			tid = max(tid, o.TID+1)
		}
		_, err := s.adm.do(ctx, request{Mode: modeTarget, Op: opNew, TID: int32(tid), Params: "targetname=" + TargetName(id)})
		if err != nil {
			return target{}, fmt.Errorf("san: add target of %s: %w", id, err)
		}
		*ts = append(*ts, target{TID: tid, Name: TargetName(id)})
		t = &(*ts)[len(*ts)-1]
	}
	if !slices.Contains(t.Accounts, s.cfg.CHAPUser) {
		_, err := s.adm.do(ctx, request{Mode: modeAccount, Op: opBind, TID: int32(t.TID), Params: "user=" + s.cfg.CHAPUser})
		if err != nil {
			return target{}, fmt.Errorf("san: bind the CHAP account to %s: %w", t.Name, err)
		}
		t.Accounts = append(t.Accounts, s.cfg.CHAPUser)
	}
	path := s.file(id)
	var have *lun
	for i := range t.LUNs {
		if t.LUNs[i].Num == LUN {
			have = &t.LUNs[i]
		}
	}
	if have != nil && have.Path != path {
		if err := s.deleteLUN(ctx, t.TID); err != nil {
			return target{}, err
		}
		have = nil
	}
	if have == nil {
		_, err := s.adm.do(ctx, request{Mode: modeDevice, Op: opNew, TID: int32(t.TID), LUN: LUN, Params: "path=" + path})
		if err != nil {
			return target{}, fmt.Errorf("san: add LUN of %s: %w", t.Name, err)
		}
		t.LUNs = append(t.LUNs, lun{Num: LUN, Path: path})
		s.cfg.Log.Info("target ready", "target", t.Name, "tid", t.TID, "path", path)
	}
	return *t, nil
}

func (s *SAN) deleteLUN(ctx context.Context, tid int) error {
	_, err := s.adm.do(ctx, request{Mode: modeDevice, Op: opDelete, TID: int32(tid), LUN: LUN})
	if err != nil && !isTgt(err, errNoLUN) {
		return fmt.Errorf("san: delete LUN of target %d: %w", tid, err)
	}
	return nil
}

// reopenLUN has tgtd close and reopen LUN 1's file, which reads its size
// again (tgtd reads it only at open). Taking the LUN offline and setting
// its path is one request, handled whole by tgtd's single event loop, so
// no initiator command sees the LUN offline.
func (s *SAN) reopenLUN(ctx context.Context, tid int, id string) error {
	_, err := s.adm.do(ctx, request{Mode: modeDevice, Op: opUpdate, TID: int32(tid), LUN: LUN,
		Params: "online=0,path=" + s.file(id)})
	if err != nil {
		return fmt.Errorf("san: reopen LUN of %s: %w", TargetName(id), err)
	}
	return nil
}

// deleteTarget deletes a target even with sessions (they end).
func (s *SAN) deleteTarget(ctx context.Context, tid int) error {
	_, err := s.adm.do(ctx, request{Mode: modeTarget, Op: opDelete, TID: int32(tid), Force: true})
	if err != nil && !isTgt(err, errNoTarget) {
		return fmt.Errorf("san: delete target %d: %w", tid, err)
	}
	return nil
}

func (s *SAN) bindInitiator(ctx context.Context, tid int, iqn string) error {
	_, err := s.adm.do(ctx, request{Mode: modeTarget, Op: opBind, TID: int32(tid), Params: "initiator-name=" + iqn})
	if err != nil && !isTgt(err, errACLHave) {
		return fmt.Errorf("san: allow %s on target %d: %w", iqn, tid, err)
	}
	return nil
}

func (s *SAN) unbindInitiator(ctx context.Context, tid int, iqn string) error {
	_, err := s.adm.do(ctx, request{Mode: modeTarget, Op: opUnbind, TID: int32(tid), Params: "initiator-name=" + iqn})
	if err != nil && !isTgt(err, errACLNone) {
		return fmt.Errorf("san: disallow %s on target %d: %w", iqn, tid, err)
	}
	return nil
}

// aclChanges is what turns the access list have into the initiators of
// hosts: names to bind and entries to unbind.
func aclChanges(have []string, hosts []string) (bind, unbind []string) {
	want := map[string]bool{}
	for _, h := range hosts {
		want[InitiatorName(h)] = true
	}
	for _, a := range have {
		if !want[a] {
			unbind = append(unbind, a)
		}
	}
	for _, h := range hosts {
		if iqn := InitiatorName(h); !slices.Contains(have, iqn) && !slices.Contains(bind, iqn) {
			bind = append(bind, iqn)
		}
	}
	return bind, unbind
}

// setACL makes hosts the only initiators t admits and ends the sessions
// of the ones taken off. Entries that are not initiator names (address
// rules, which Shoal never adds) are removed too.
func (s *SAN) setACL(ctx context.Context, t target, hosts []string) error {
	bind, unbind := aclChanges(t.ACL, hosts)
	for _, iqn := range bind {
		if err := s.bindInitiator(ctx, t.TID, iqn); err != nil {
			return err
		}
	}
	drop := map[string]bool{}
	for _, a := range unbind {
		key := "initiator-name="
		if !strings.HasPrefix(a, "iqn.") && !strings.HasPrefix(a, "eui.") && !strings.HasPrefix(a, "naa.") {
			key = "initiator-address="
		}
		_, err := s.adm.do(ctx, request{Mode: modeTarget, Op: opUnbind, TID: int32(t.TID), Params: key + a})
		if err != nil && !isTgt(err, errACLNone) {
			return fmt.Errorf("san: disallow %s on %s: %w", a, t.Name, err)
		}
		drop[a] = true
	}
	if len(drop) == 0 {
		return nil
	}
	return s.dropSessions(ctx, []int{t.TID}, drop)
}

// dropSessions ends every connection of the initiators in drop on the
// targets tids. It sweeps twice, 300 ms apart: a login that passed the
// access check just before the initiator left the list may complete its
// session after the first sweep.
func (s *SAN) dropSessions(ctx context.Context, tids []int, drop map[string]bool) error {
	for pass := 0; pass < 2; pass++ {
		if pass > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(300 * time.Millisecond):
			}
		}
		for _, tid := range tids {
			text, err := s.adm.do(ctx, request{Mode: modeConnection, Op: opShow, TID: int32(tid)})
			if isTgt(err, errNoTarget) {
				continue
			} else if err != nil {
				return fmt.Errorf("san: list sessions of target %d: %w", tid, err)
			}
			conns, err := parseConns(text)
			if err != nil {
				return err
			}
			for _, c := range conns {
				if !drop[c.Initiator] {
					continue
				}
				_, err := s.adm.do(ctx, request{Mode: modeConnection, Op: opDelete, TID: int32(tid), SID: c.SID, CID: c.CID})
				if err != nil && !isTgt(err, errNoSession) && !isTgt(err, errNoConn) && !isTgt(err, errNoTarget) {
					return fmt.Errorf("san: end session %d of %s on target %d: %w", c.SID, c.Initiator, tid, err)
				}
				s.cfg.Log.Info("session ended", "tid", tid, "sid", c.SID, "cid", c.CID, "initiator", c.Initiator, "address", c.Address)
			}
		}
	}
	return nil
}
