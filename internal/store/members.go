package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/shoalvm/shoal/internal/api"
)

// Members of the embedded etcd cluster. Server replicas that embed etcd
// are its members: a new replica is added as a learner (which does not
// count towards the quorum, so a join that never completes cannot stall
// the cluster) and promotes itself to a voting member once it has caught
// up (see StartEmbedded).

// Member is one member of the etcd cluster.
type Member struct {
	ID       uint64
	Name     string // "" until the member first starts
	PeerURLs []string
	Learner  bool
}

// Started tells whether the member has ever run (it publishes its name
// when it first starts).
func (m Member) Started() bool { return m.Name != "" }

// Members lists the etcd cluster's members.
func (s *Store) Members(ctx context.Context) ([]Member, error) {
	resp, err := s.c.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd members: %w: %w", api.ErrUnavailable, err)
	}
	out := make([]Member, 0, len(resp.Members))
	for _, m := range resp.Members {
		out = append(out, Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, Learner: m.IsLearner})
	}
	return out, nil
}

// AddMember adds a member reached at peerURL, as a learner, and returns
// the initial-cluster string (see InitialCluster) with which the new
// member, called name, starts (EmbedOptions.ClusterState existing). A
// member that was added with this peer URL but never started (a join
// that did not finish) is reused.
func (s *Store) AddMember(ctx context.Context, name, peerURL string) (string, error) {
	ms, err := s.Members(ctx)
	if err != nil {
		return "", err
	}
	for _, m := range ms {
		if !slices.Contains(m.PeerURLs, peerURL) {
			continue
		}
		if m.Started() {
			return "", api.Errorf(api.ErrConflict, "etcd member %q already uses the peer URL %s: give this server another --etcd-peer-url", m.Name, peerURL)
		}
		return InitialCluster(ms, m.ID, name), nil
	}
	// etcd refuses new members until this member has been connected to a
	// quorum for 5 s (as after the previous join): wait that out.
	resp, err := s.c.MemberAddAsLearner(ctx, []string{peerURL})
	for deadline := time.Now().Add(10 * time.Second); errors.Is(err, rpctypes.ErrUnhealthy) && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		resp, err = s.c.MemberAddAsLearner(ctx, []string{peerURL})
	}
	switch {
	case errors.Is(err, rpctypes.ErrUnhealthy):
		return "", api.Errorf(api.ErrUnavailable, "the cluster cannot take a new member now: a server is down or has not been connected for long; bring every server up, then retry")
	case errors.Is(err, rpctypes.ErrTooManyLearners):
		pending := "another server"
		for _, m := range ms {
			if m.Learner {
				pending = "the server with etcd peer URL " + strings.Join(m.PeerURLs, ",")
			}
		}
		return "", api.Errorf(api.ErrConflict, "%s is joining right now: wait until it runs (if it gave up, run its 'shoal server --join' again), then retry", pending)
	case errors.Is(err, rpctypes.ErrPeerURLExist):
		return "", api.Errorf(api.ErrConflict, "the peer URL %s is already an etcd member's: give this server another --etcd-peer-url", peerURL)
	case err != nil:
		return "", fmt.Errorf("add etcd member %s: %w: %w", peerURL, api.ErrUnavailable, err)
	}
	ms = ms[:0]
	for _, m := range resp.Members {
		ms = append(ms, Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, Learner: m.IsLearner})
	}
	return InitialCluster(ms, resp.Member.ID, name), nil
}

// RemoveMember removes the member called name from the etcd cluster for
// good: the quorum then counts only the members left, and the removed
// member's data can never rejoin (see settle).
func (s *Store) RemoveMember(ctx context.Context, name string) error {
	ms, err := s.Members(ctx)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(ms, func(m Member) bool { return m.Name == name })
	if i < 0 {
		var names []string
		for _, m := range ms {
			if m.Started() {
				names = append(names, m.Name)
			}
		}
		return api.Errorf(api.ErrNotFound, "no server called %q is a member of the cluster's etcd (its members: %s)", name, strings.Join(names, ", "))
	}
	_, err = s.c.MemberRemove(ctx, ms[i].ID)
	switch {
	case errors.Is(err, rpctypes.ErrMemberNotFound):
		return nil // removed meanwhile
	case errors.Is(err, rpctypes.ErrUnhealthy):
		return api.Errorf(api.ErrUnavailable, "removing server %q now would leave the cluster's etcd without a quorum of running members: start the other servers first", name)
	case err != nil:
		return fmt.Errorf("remove etcd member %q: %w: %w", name, api.ErrUnavailable, err)
	}
	return nil
}

// InitialCluster is the initial-cluster string of members, e.g.
// "s1=https://10.57.0.1:7380,s2=https://10.57.0.252:7380": the member
// with ID id is called name.
func InitialCluster(members []Member, id uint64, name string) string {
	var parts []string
	for _, m := range members {
		n := m.Name
		if m.ID == id {
			n = name
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, n+"="+u)
		}
	}
	return strings.Join(parts, ",")
}

func isLoopback(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	ip := net.ParseIP(u.Hostname())
	return u.Hostname() == "localhost" || ip != nil && ip.IsLoopback()
}

// settle finishes a member's start: a learner is promoted to a voting
// member once it has caught up, and a member restarted with a new peer
// URL records it, so that new members reach it there.
func (e *Embedded) settle(ctx context.Context, log *slog.Logger, peerURL string) error {
	id := uint64(e.etcd.Server.MemberID())
	deadline := time.Now().Add(60 * time.Second)
	for {
		ms, err := (&Store{c: e.client}).Members(ctx)
		if err != nil {
			return err
		}
		i := slices.IndexFunc(ms, func(m Member) bool { return m.ID == id })
		if i < 0 {
			return fmt.Errorf("this etcd member (%x) is not in its cluster any more: it was removed; move its data dir away and join again", id)
		}
		me := ms[i]
		if !me.Learner {
			if !slices.Equal(me.PeerURLs, []string{peerURL}) {
				if len(ms) > 1 && isLoopback(peerURL) && !isLoopback(me.PeerURLs[0]) {
					return fmt.Errorf("the other etcd members reach this one at %s, and cannot at the loopback address %s: start it with --etcd-peer-url %s", me.PeerURLs[0], peerURL, me.PeerURLs[0])
				}
				if _, err := e.client.MemberUpdate(ctx, id, []string{peerURL}); err != nil {
					return fmt.Errorf("record the new etcd peer URL %s: %w", peerURL, err)
				}
				log.Info("etcd peer URL changed", "from", me.PeerURLs, "to", peerURL)
			}
			return nil
		}
		_, err = e.client.MemberPromote(ctx, id)
		if err == nil {
			log.Info("this etcd member is now a voting member")
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("this etcd member did not catch up with its cluster within 60s (%w): check that the other servers reach its peer URL %s", err, peerURL)
		}
		log.Info("etcd learner catching up before its promotion", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}
