package server

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
)

// Replicas. Every server registers itself (GET /v1/cluster/servers) and
// campaigns to lead; the leader alone runs the controllers (migrations,
// drains, failover). API calls work on every replica: what they start is
// written to etcd, where the leader's controllers pick it up within a
// scan.
const (
	sessionTTL = 3 * time.Second // a dead leader is replaced within about this
	scanEvery  = time.Second     // the leader looks for work other replicas recorded
)

// Start joins the replicas and runs the controllers while this server
// leads, until ctx ends. If no replica leads yet, it returns only once
// this one leads or another does.
func (s *Server) Start(ctx context.Context) error {
	s.upkeep.rescue(ctx) // a full etcd takes no session
	ss, err := s.st.NewSession(ctx, sessionTTL)
	if err != nil {
		return err
	}
	if err := s.st.RegisterServer(ctx, ss, s.self()); err != nil {
		return err
	}
	if err := s.st.DropStaleCampaign(ctx, ss, s.self().Name); err != nil {
		return err
	}
	go s.images.run(ctx)
	go s.upkeep.run(ctx)
	first := make(chan error, 1)
	go s.lead(ctx, ss, first)
	select {
	case err := <-first:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) self() api.Server {
	name := s.cfg.Name
	if name == "" {
		name = "server"
	}
	return api.Server{Name: name, URL: s.cfg.URL}
}

// lead campaigns, runs the controllers while leading, and campaigns again
// when leadership is lost. first gets the outcome of the first round: nil
// once this replica runs the controllers, or another one leads.
func (s *Server) lead(ctx context.Context, ss *store.Session, first chan<- error) {
	var once sync.Once
	done := make(chan struct{})
	settled := func() { once.Do(func() { first <- nil; close(done) }) }
	go func() {
		for ctx.Err() == nil {
			if l, err := s.st.Leader(ctx); err == nil && l != "" && l != s.self().Name {
				settled()
				return
			}
			select {
			case <-ctx.Done():
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	for ctx.Err() == nil {
		e, err := s.st.Campaign(ctx, ss, s.self().Name)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("campaign for leader failed; retrying", "err", err)
			select {
			case <-ss.Done():
				if ss, err = s.renewSession(ctx); err != nil {
					return
				}
			case <-time.After(time.Second):
			}
			continue
		}
		select {
		case <-ss.Done(): // won with a session that had lapsed meanwhile
			if ss, err = s.renewSession(ctx); err != nil {
				return
			}
			continue
		default:
		}
		lctx, cancel := context.WithCancel(ctx)
		s.log.Info("this server leads: running the controllers", "name", s.self().Name)
		s.leading.Store(true)
		if err := s.runControllers(lctx); err != nil {
			s.log.Warn("controllers did not start", "err", err)
		}
		settled()
		select {
		case <-ctx.Done():
		case <-ss.Done():
			s.log.Warn("lost the session (etcd unreachable?): controllers stop until this server leads again")
		}
		s.leading.Store(false)
		cancel()
		if ctx.Err() != nil {
			rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
			_ = e.Resign(rctx)
			rcancel()
			return
		}
		if ss, err = s.renewSession(ctx); err != nil {
			return
		}
	}
}

// renewSession opens a new session after one was lost, and registers
// this replica again.
func (s *Server) renewSession(ctx context.Context) (*store.Session, error) {
	for {
		ss, err := s.st.NewSession(ctx, sessionTTL)
		if err == nil {
			if err = s.st.RegisterServer(ctx, ss, s.self()); err == nil {
				return ss, nil
			}
			_ = ss.Close()
		}
		s.log.Warn("cannot rejoin the replicas yet", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// runControllers starts the controllers for as long as ctx lives:
// failover at once, the others as soon as their first look succeeds
// (etcd may still be settling after a change of leader).
func (s *Server) runControllers(ctx context.Context) error {
	go s.failover.run(ctx)
	for _, start := range []func(context.Context) error{s.migrations.start, s.drains.start} {
		for {
			err := start(ctx)
			if err == nil || ctx.Err() != nil {
				break
			}
			s.log.Warn("a controller did not start; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return ctx.Err()
}

// rescan calls scan every scanEvery until ctx ends.
func rescan(ctx context.Context, scan func(context.Context) error) {
	t := time.NewTicker(scanEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = scan(ctx)
		}
	}
}

func (s *Server) listServers(w http.ResponseWriter, r *http.Request) error {
	out, err := s.st.ListServers(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
