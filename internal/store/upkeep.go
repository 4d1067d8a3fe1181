package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// Upkeep of etcd itself: its history is compacted and its members'
// databases defragmented (see internal/server/upkeep.go), or the backend
// grows until its quota, after which etcd refuses every write (the NOSPACE
// alarm).

// DefaultQuotaBytes is etcd's backend quota unless configured otherwise:
// the embedded member's, and what Shoal assumes of an external cluster.
const DefaultQuotaBytes int64 = 2 << 30

// Alarm kinds, as etcd names them.
const (
	AlarmNoSpace = "NOSPACE"
	AlarmCorrupt = "CORRUPT"
)

// MemberStatus is one etcd member as its Status API reports it.
type MemberStatus struct {
	ID          uint64
	Name        string
	Endpoint    string // the client URL it was asked at
	Leader      bool   // the raft leader
	Learner     bool
	DBSize      int64 // bytes of its backend file, what the quota counts
	DBSizeInUse int64 // bytes in use: DBSize less what a defragmentation frees
	Err         error // the member did not answer (the other fields but ID, Name, Endpoint are zero)
}

// Alarm is an alarm raised on an etcd member.
type Alarm struct {
	MemberID uint64
	Kind     string // AlarmNoSpace, AlarmCorrupt
}

// SetMemberClient sets the client with which the store reaches each etcd
// member by its client URL (Status, Defragment): one that dials, where
// the store's own client is an in-process one that reaches only its
// member. Without it, the store's client is used.
func (s *Store) SetMemberClient(c *clientv3.Client) { s.mc = c }

func (s *Store) memberClient() *clientv3.Client {
	if s.mc != nil {
		return s.mc
	}
	return s.c
}

// MemberStatuses asks every member with a client URL for its status. A
// member that does not answer has Err set; the call fails only when the
// members cannot be listed.
func (s *Store) MemberStatuses(ctx context.Context) ([]MemberStatus, error) {
	resp, err := s.c.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd members: %w: %w", api.ErrUnavailable, err)
	}
	out := make([]MemberStatus, 0, len(resp.Members))
	for _, m := range resp.Members {
		ms := MemberStatus{ID: m.ID, Name: m.Name, Learner: m.IsLearner}
		if len(m.ClientURLs) == 0 {
			ms.Err = fmt.Errorf("etcd member %x has not started: %w", m.ID, api.ErrUnavailable)
			out = append(out, ms)
			continue
		}
		ms.Endpoint = m.ClientURLs[0]
		st, err := s.memberClient().Status(ctx, ms.Endpoint)
		switch {
		case err != nil:
			ms.Err = fmt.Errorf("etcd member %s at %s: %w: %w", m.Name, ms.Endpoint, api.ErrUnavailable, err)
		case st.Header.MemberId != m.ID:
			// e.g. embedded members that all advertise a loopback client URL
			ms.Err = fmt.Errorf("etcd member %s advertises the client URL %s, which reaches another member (%x) from here: "+
				"only the server it runs in sees it: %w", m.Name, ms.Endpoint, st.Header.MemberId, api.ErrUnavailable)
		default:
			ms.Leader = st.Leader == m.ID
			ms.DBSize, ms.DBSizeInUse = st.DbSize, st.DbSizeInUse
		}
		out = append(out, ms)
	}
	slices.SortFunc(out, func(a, b MemberStatus) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// Alarms lists the alarms raised on the cluster's members.
func (s *Store) Alarms(ctx context.Context) ([]Alarm, error) {
	resp, err := s.c.AlarmList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd alarms: %w: %w", api.ErrUnavailable, err)
	}
	out := make([]Alarm, 0, len(resp.Alarms))
	for _, a := range resp.Alarms {
		if a.Alarm == etcdserverpb.AlarmType_NONE {
			continue
		}
		out = append(out, Alarm{MemberID: a.MemberID, Kind: a.Alarm.String()})
	}
	return out, nil
}

// DisarmAlarm clears an alarm (after its cause was dealt with: a NOSPACE
// alarm once the members' databases are back under the quota).
func (s *Store) DisarmAlarm(ctx context.Context, a Alarm) error {
	kind, ok := etcdserverpb.AlarmType_value[a.Kind]
	if !ok {
		return api.Errorf(api.ErrInvalid, "no etcd alarm is called %q", a.Kind)
	}
	if _, err := s.c.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: a.MemberID, Alarm: etcdserverpb.AlarmType(kind)}); err != nil {
		return fmt.Errorf("disarm etcd alarm %s: %w: %w", a.Kind, api.ErrUnavailable, err)
	}
	return nil
}

// Compact drops the history before revision rev (watches and reads at
// older revisions then fail with ErrCompacted, and their callers read
// afresh). It returns once the backend dropped it, so that a
// defragmentation that follows frees the space. A revision compacted
// already is no error.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	_, err := s.c.Compact(ctx, rev, clientv3.WithCompactPhysical())
	if err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return fmt.Errorf("compact etcd to revision %d: %w: %w", rev, api.ErrUnavailable, err)
	}
	return nil
}

// Defragment rewrites the database of the member at endpoint, giving the
// space that compactions freed back to the file system. The member
// answers nothing else meanwhile (a fraction of a second for a small
// database): defragment one member at a time.
func (s *Store) Defragment(ctx context.Context, endpoint string) error {
	if _, err := s.memberClient().Defragment(ctx, endpoint); err != nil {
		return fmt.Errorf("defragment etcd member at %s: %w: %w", endpoint, api.ErrUnavailable, err)
	}
	return nil
}
