package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
)

// Upkeep of etcd. Every revision of every key stays in etcd's history
// until it is compacted, and the space compactions free stays in the
// database file until it is defragmented; etcd refuses every write once
// the file reaches its quota (the NOSPACE alarm), failover included. The
// leader compacts the history older than UpkeepConfig.Retain, defragments
// a member whose file is mostly free space, turns alarms into events and,
// when the NOSPACE alarm is raised, frees what it can at once and clears
// the alarm once the members are back under the quota.
//
// Readers of the history are safe: the placement cache and the hosts'
// watches read the state, then watch from that revision on (a moment
// later, well within Retain); a watch or read at a compacted revision
// fails with ErrCompacted, and its caller reads the state afresh.

// UpkeepConfig tunes the upkeep; zero fields take the defaults.
type UpkeepConfig struct {
	Every         time.Duration // how often the leader looks (default 1 min)
	Retain        time.Duration // history kept (default 5 min); under NOSPACE, none
	DefragMinFree int64         // defragment a member with at least this much free space, and half its file free (default 64 MiB)
	DefragEvery   time.Duration // a member at most this often, but under NOSPACE (default 1 h)
	QuotaBytes    int64         // etcd's backend quota (default store.DefaultQuotaBytes)
	Off           bool          // no upkeep at all (tests that show what happens without it)
}

func (c *UpkeepConfig) defaults() {
	if c.Every <= 0 {
		c.Every = time.Minute
	}
	if c.Retain < 0 {
		c.Retain = 0
	} else if c.Retain == 0 {
		c.Retain = 5 * time.Minute
	}
	if c.DefragMinFree <= 0 {
		c.DefragMinFree = 64 << 20
	}
	if c.DefragEvery <= 0 {
		c.DefragEvery = time.Hour
	}
	if c.QuotaBytes <= 0 {
		c.QuotaBytes = store.DefaultQuotaBytes
	}
}

// Fraction of the quota under which a member's NOSPACE alarm is cleared.
const disarmBelowPercent = 90

type revAt struct {
	at  time.Time
	rev int64
}

// upkeep is every replica's loop (see tick); its state lives only in
// this process.
type upkeep struct {
	cfg     UpkeepConfig
	st      *store.Store
	log     *slog.Logger
	self    string
	leading func() bool

	history    []revAt // revisions seen, oldest first, back to Retain
	compacted  int64
	lastDefrag map[uint64]time.Time
	raised     map[store.Alarm]bool // alarms announced as raised
	pending    []api.Event          // events not written yet (etcd refused them: NOSPACE)
}

func newUpkeep(cfg UpkeepConfig, st *store.Store, log *slog.Logger, self string, leading func() bool) *upkeep {
	cfg.defaults()
	return &upkeep{cfg: cfg, st: st, log: log, self: self, leading: leading,
		lastDefrag: map[uint64]time.Time{}, raised: map[store.Alarm]bool{}}
}

// run looks every cfg.Every until ctx ends.
func (u *upkeep) run(ctx context.Context) {
	if u.cfg.Off {
		return
	}
	t := time.NewTicker(u.cfg.Every)
	defer t.Stop()
	for {
		u.tick(ctx, false)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// rescue frees space at once if the NOSPACE alarm is raised: a server
// cannot even join the replicas then (etcd refuses its session).
func (u *upkeep) rescue(ctx context.Context) {
	if !u.cfg.Off {
		u.tick(ctx, true)
	}
}

// tick is one look. The leader compacts (compaction is the cluster's)
// and turns alarms into events; so does a replica that stands in for it
// under NOSPACE (none can become leader then), or that starts under
// NOSPACE (force). The replicas take turns to defragment the members
// they reach (see myTurn), one member a turn, so that members only their
// own server reaches (embedded members advertise a loopback client URL
// by default) are kept too, one at a time. Under NOSPACE every replica
// defragments what it reaches at once, and clears the alarms of those
// members once they are under the quota.
func (u *upkeep) tick(ctx context.Context, force bool) {
	alarms, err := u.st.Alarms(ctx)
	if err != nil {
		u.log.Warn("etcd upkeep: cannot list alarms", "err", err)
		return
	}
	noSpace := slices.ContainsFunc(alarms, func(a store.Alarm) bool { return a.Kind == store.AlarmNoSpace })
	lead := u.leading() || force && noSpace || noSpace && u.standIn(ctx)
	now := time.Now()
	if lead {
		u.compact(ctx, now, noSpace)
	} else {
		u.history = u.history[:0] // a new leader starts its own
	}
	turn := noSpace || u.myTurn(ctx, now)
	if !lead && !turn {
		return
	}
	ms, err := u.st.MemberStatuses(ctx) // after the compaction: what it freed
	if err != nil {
		u.log.Warn("etcd upkeep: cannot read the members", "err", err)
		return
	}
	if lead {
		u.noteAlarms(alarms, ms, now)
	}
	if turn {
		for _, m := range defragCandidates(ms, u.lastDefrag, now, u.cfg, noSpace) {
			start := time.Now()
			if err := u.st.Defragment(ctx, m.Endpoint); err != nil {
				u.log.Warn("etcd upkeep: defragmentation failed", "member", m.Name, "err", err)
				continue
			}
			u.lastDefrag[m.ID] = now
			u.log.Info("etcd member defragmented", "member", m.Name, "db_size_before", m.DBSize, "in_use", m.DBSizeInUse, "took", time.Since(start).Round(time.Millisecond))
		}
	}
	if noSpace {
		u.disarm(ctx, alarms, lead)
	}
	if lead {
		u.flush(ctx)
	}
}

// compact drops the history older than cfg.Retain; under NOSPACE, all.
func (u *upkeep) compact(ctx context.Context, now time.Time, noSpace bool) {
	rev, err := u.st.Revision(ctx)
	if err != nil {
		u.log.Warn("etcd upkeep: cannot read the revision", "err", err)
		return
	}
	u.history = append(u.history, revAt{now, rev})
	target := compactTarget(u.history, now, u.cfg.Retain)
	if noSpace {
		target = rev
	}
	u.history = slices.DeleteFunc(u.history, func(r revAt) bool { return r.rev < target })
	if target <= u.compacted {
		return
	}
	if err := u.st.Compact(ctx, target); err != nil {
		u.log.Warn("etcd upkeep: compaction failed", "err", err)
		return
	}
	u.compacted = target
	u.log.Debug("etcd compacted", "revision", target)
}

// myTurn tells whether this replica may defragment now: the replicas
// take turns, one look each, in the order of their names. Pure but for
// the list of replicas.
func (u *upkeep) myTurn(ctx context.Context, now time.Time) bool {
	svs, err := u.st.ListServers(ctx)
	if err != nil {
		return false
	}
	names := make([]string, 0, len(svs))
	for _, sv := range svs {
		names = append(names, sv.Name)
	}
	return turnOf(names, now, u.cfg.Every) == u.self
}

// turnOf is the replica whose turn it is at now, with turns every long.
// Pure.
func turnOf(names []string, now time.Time, every time.Duration) string {
	if len(names) == 0 {
		return ""
	}
	names = slices.Clone(names)
	slices.Sort(names)
	return names[int(now.UnixNano()/int64(every)%int64(len(names)))]
}

// standIn tells whether this replica stands in for a leader: none leads,
// and it is the first of the replicas by name.
func (u *upkeep) standIn(ctx context.Context) bool {
	if l, err := u.st.Leader(ctx); err != nil || l != "" {
		return false
	}
	svs, err := u.st.ListServers(ctx)
	if err != nil {
		return false
	}
	first := u.self
	for _, sv := range svs {
		first = min(first, sv.Name)
	}
	return first == u.self
}

// disarm clears the NOSPACE alarms of the members it reaches that are
// back under the quota; lead: it records the alarms cleared.
func (u *upkeep) disarm(ctx context.Context, alarms []store.Alarm, lead bool) {
	ms, err := u.st.MemberStatuses(ctx)
	if err != nil {
		u.log.Warn("etcd upkeep: cannot read the members", "err", err)
		return
	}
	for _, a := range alarms {
		i := slices.IndexFunc(ms, func(m store.MemberStatus) bool { return m.ID == a.MemberID })
		if a.Kind != store.AlarmNoSpace || i < 0 || !underQuota(ms[i], u.cfg.QuotaBytes) {
			continue // not ours to clear, or still full (a member this replica does not reach: its own server clears it)
		}
		if err := u.st.DisarmAlarm(ctx, a); err != nil {
			u.log.Warn("etcd upkeep: cannot clear the alarm", "alarm", a.Kind, "err", err)
			continue
		}
		u.log.Info("etcd NOSPACE alarm cleared after compaction and defragmentation", "member", memberName(ms, a.MemberID))
	}
	if alarms, err = u.st.Alarms(ctx); err == nil && lead {
		u.noteAlarms(alarms, ms, time.Now())
	}
}

func underQuota(m store.MemberStatus, quota int64) bool {
	return m.Err == nil && m.DBSize*100 < quota*disarmBelowPercent
}

// noteAlarms queues an event for each alarm raised since the last look,
// and for each cleared.
func (u *upkeep) noteAlarms(alarms []store.Alarm, ms []store.MemberStatus, now time.Time) {
	cur := map[store.Alarm]bool{}
	for _, a := range alarms {
		cur[a] = true
		if !u.raised[a] {
			u.raised[a] = true
			u.pending = append(u.pending, alarmEvent(a, memberName(ms, a.MemberID), u.cfg.QuotaBytes, now))
		}
	}
	for a := range u.raised {
		if !cur[a] {
			delete(u.raised, a)
			u.pending = append(u.pending, api.Event{Time: now, Kind: api.EventEtcdAlarmCleared, Severity: api.SeverityInfo,
				Message: fmt.Sprintf("the %s alarm of etcd member %s is cleared: it takes writes again", a.Kind, memberName(ms, a.MemberID))})
		}
	}
}

// flush writes the events queued; those etcd refuses (while NOSPACE)
// wait for the next look.
func (u *upkeep) flush(ctx context.Context) {
	for len(u.pending) > 0 {
		wctx, cancel := context.WithTimeout(ctx, eventWriteTimeout)
		_, err := u.st.AppendEvent(wctx, u.pending[0])
		cancel()
		if err != nil {
			u.log.Debug("etcd upkeep: event not written yet", "kind", u.pending[0].Kind, "err", err)
			return
		}
		u.pending = u.pending[1:]
	}
}

func alarmEvent(a store.Alarm, member string, quota int64, now time.Time) api.Event {
	return api.Event{Time: now, Kind: api.EventEtcdAlarm, Severity: api.SeverityError,
		Message: fmt.Sprintf("etcd member %s raised the %s alarm: %s", member, a.Kind, alarmAdvice(a.Kind, quota))}
}

// alarmAdvice says what an alarm means and what to do about it.
func alarmAdvice(kind string, quota int64) string {
	switch kind {
	case store.AlarmNoSpace:
		return fmt.Sprintf("its database reached the quota (%s) and etcd refuses every write, failover included. "+
			"Shoal compacts and defragments etcd and clears the alarm by itself once the database is under %d%% of the quota; "+
			"if it stays full, the live data fills it: delete what is not needed, or compact, defragment "+
			"and clear it by hand ('etcdctl compact REV', 'etcdctl defrag --cluster', 'etcdctl alarm disarm')",
			humanBytes(quota), disarmBelowPercent)
	case store.AlarmCorrupt:
		return "its data differs from the other members': replace that member " +
			"(remove it, move its data dir away, join it again), then 'etcdctl alarm disarm'"
	}
	return "see etcd's documentation, then 'etcdctl alarm disarm'"
}

func memberName(ms []store.MemberStatus, id uint64) string {
	for _, m := range ms {
		if m.ID == id && m.Name != "" {
			return m.Name
		}
	}
	return strconv.FormatUint(id, 16)
}

// compactTarget is the newest revision seen at least retain before now
// (0: none yet). Pure.
func compactTarget(history []revAt, now time.Time, retain time.Duration) int64 {
	var rev int64
	for _, h := range history {
		if now.Sub(h.at) >= retain {
			rev = h.rev
		}
	}
	return rev
}

// defragCandidates are the members to defragment now, one after the
// other: those with much free space (at least cfg.DefragMinFree and half
// the file, or a tenth of a file at three quarters of the quota) not
// defragmented within cfg.DefragEvery, at most one per look; under
// NOSPACE, every member that answers, but one found full at its last try
// within cfg.DefragEvery. Pure.
func defragCandidates(ms []store.MemberStatus, last map[uint64]time.Time, now time.Time, cfg UpkeepConfig, noSpace bool) []store.MemberStatus {
	var out []store.MemberStatus
	for _, m := range ms {
		free := m.DBSize - m.DBSizeInUse
		switch {
		case m.Err != nil:
			continue
		case noSpace:
			// Its in-use size may not show yet what a compaction freed:
			// each look tries, but for a member still full after one.
			if t, ok := last[m.ID]; !ok || free > 0 || now.Sub(t) >= cfg.DefragEvery {
				out = append(out, m)
			}
			continue
		case free <= 0:
			continue
		}
		much := free >= cfg.DefragMinFree && free*2 >= m.DBSize || m.DBSize*4 >= cfg.QuotaBytes*3 && free*10 >= m.DBSize
		if t, ok := last[m.ID]; much && (!ok || now.Sub(t) >= cfg.DefragEvery) {
			return []store.MemberStatus{m}
		}
	}
	return out
}

// clusterStatus answers GET /v1/cluster/status.
func (s *Server) clusterStatus(w http.ResponseWriter, r *http.Request) error {
	ms, err := s.st.MemberStatuses(r.Context())
	if err != nil {
		return err
	}
	alarms, err := s.st.Alarms(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, clusterStatusOf(ms, alarms, s.upkeep.cfg.QuotaBytes))
	return nil
}

// clusterStatusOf is the API's view of the members and alarms. Pure.
func clusterStatusOf(ms []store.MemberStatus, alarms []store.Alarm, quota int64) api.ClusterStatus {
	out := api.ClusterStatus{QuotaBytes: quota, Members: []api.EtcdMember{}, Alarms: []api.EtcdAlarm{}}
	for _, m := range ms {
		em := api.EtcdMember{Name: m.Name, ID: strconv.FormatUint(m.ID, 16), Endpoint: m.Endpoint, Leader: m.Leader, Learner: m.Learner,
			DBSizeBytes: m.DBSize, DBSizeInUseBytes: m.DBSizeInUse}
		if m.Err != nil {
			em.Error = m.Err.Error()
		}
		out.Members = append(out.Members, em)
	}
	var kinds []string
	for _, a := range alarms {
		out.Alarms = append(out.Alarms, api.EtcdAlarm{Member: memberName(ms, a.MemberID), Kind: a.Kind})
		if !slices.Contains(kinds, a.Kind) {
			kinds = append(kinds, a.Kind)
			if out.Advice != "" {
				out.Advice += "\n"
			}
			out.Advice += a.Kind + ": " + alarmAdvice(a.Kind, quota)
		}
	}
	return out
}
