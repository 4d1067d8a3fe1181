package node

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/agent"
	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool"
	"github.com/shoalvm/shoal/internal/san"
)

// sanServer is a storage server's SAN as its agent sees it (agent.Served):
// the tgtd it runs, started again whenever it dies, and the pool whose
// config names this server, served once that config is seen. Volume
// records' access lists are applied to their targets (SetAllowed), and
// after every start of tgtd the SAN is rebuilt with them.
type sanServer struct {
	name   string // this storage server's host name
	dir    string // the volumes' files
	pools  poolLister
	log    *slog.Logger
	daemon san.DaemonConfig
	wait   time.Duration // how long a volume job waits for the SAN

	mu      sync.Mutex
	d       *san.Daemon         // nil while tgtd is not running
	san     *san.SAN            // nil until its pool is served (and after tgtd died)
	conf    api.PoolConfig      // the pool served (its CHAP account), once seen
	space   *pool.Capacity      // the last capacity read
	synced  bool                // the agent gave a snapshot of the volume records
	wanted  map[string][]string // volume id -> access list, as the records say
	applied map[string][]string // volume id -> access list, as tgtd has it (run's own)
	kick    chan struct{}       // a record changed: apply the lists
}

// poolLister is where the storage server reads the pools the cluster
// defines (agentapi.Catalog).
type poolLister interface {
	Pools(ctx context.Context) ([]api.PoolConfig, error)
}

var _ agent.Served = (*sanServer)(nil)

// Polling intervals of the storage server.
const (
	sanPoll      = time.Second      // pool configs, capacity, access lists
	sanReadyWait = 15 * time.Second // a volume job waits this long for the SAN
)

func newSANServer(name, dir string, pools poolLister, log *slog.Logger, d san.DaemonConfig) *sanServer {
	return &sanServer{name: name, dir: dir, pools: pools, log: log, daemon: d, wait: sanReadyWait,
		wanted: map[string][]string{}, applied: map[string][]string{}, kick: make(chan struct{}, 1)}
}

// startDaemon starts tgtd; the SAN is to be rebuilt on it.
func (s *sanServer) startDaemon(ctx context.Context) error {
	d, err := san.StartDaemon(ctx, s.daemon)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.d, s.san = d, nil
	s.mu.Unlock()
	return nil
}

// run keeps tgtd running and the SAN served until ctx ends, then stops
// tgtd.
func (s *sanServer) run(ctx context.Context) {
	t := time.NewTicker(sanPoll)
	defer t.Stop()
	for {
		s.mu.Lock()
		d := s.d
		s.mu.Unlock()
		var died <-chan struct{}
		if d != nil {
			died = d.Done()
		}
		select {
		case <-ctx.Done():
			if d != nil {
				sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_ = d.Stop(sctx)
				cancel()
			}
			return
		case <-died:
			s.log.Warn("tgtd died; starting it again (the SAN is rebuilt from the volumes' files and records)")
			s.mu.Lock()
			s.d, s.san = nil, nil
			s.mu.Unlock()
		case <-t.C:
		case <-s.kick:
		}
		s.converge(ctx)
	}
}

// converge does one round: tgtd running, the pool's config read, the SAN
// made and rebuilt, the access lists applied, the capacity read. The
// SAN's calls are made without s.mu held (one may wait for a volume
// being made): Spaces, Driver and Volumes never wait on them.
func (s *sanServer) converge(ctx context.Context) {
	s.mu.Lock()
	d := s.d
	s.mu.Unlock()
	if d == nil {
		if err := s.startDaemon(ctx); err != nil {
			s.log.Warn("cannot start tgtd; trying again", "err", err)
			return
		}
	}
	cs, err := s.pools.Pools(ctx)
	if err != nil {
		s.log.Warn("cannot read the pools the cluster defines", "err", err)
	} else {
		s.serve(ctx, cs)
	}
	s.mu.Lock()
	sn, wanted := s.san, maps.Clone(s.wanted)
	s.mu.Unlock()
	if sn == nil {
		return
	}
	s.apply(ctx, sn, wanted)
	c, err := sn.Capacity(ctx)
	if err != nil {
		s.log.Warn("cannot read the SAN's space", "err", err)
		return
	}
	s.mu.Lock()
	if s.san == sn {
		s.space = &c
	}
	s.mu.Unlock()
}

// serve serves the pool of cs that names this server (making the SAN on
// tgtd and rebuilding it with the records' access lists), or stops
// serving if none does.
func (s *sanServer) serve(ctx context.Context, cs []api.PoolConfig) {
	i := slices.IndexFunc(cs, func(c api.PoolConfig) bool { return c.Type == api.PoolISCSI && c.Server == s.name })
	s.mu.Lock()
	if i < 0 {
		if s.conf.Name != "" {
			s.log.Info("no pool names this storage server any more", "pool", s.conf.Name)
		}
		s.conf, s.san, s.space = api.PoolConfig{}, nil, nil
		s.mu.Unlock()
		return
	}
	c := cs[i]
	same := s.san != nil && c.Name == s.conf.Name && c.CHAPUser == s.conf.CHAPUser && c.CHAPSecret == s.conf.CHAPSecret
	d, synced, wanted := s.d, s.synced, maps.Clone(s.wanted)
	s.mu.Unlock()
	if same || !synced || d == nil {
		return // serving already, or waiting for the records' access lists
	}
	sn, err := san.New(ctx, san.Config{Dir: s.dir, CHAPUser: c.CHAPUser, CHAPSecret: c.CHAPSecret, Log: s.log}, d)
	if err == nil {
		err = sn.Rebuild(ctx, wanted)
	}
	if err != nil {
		s.log.Warn("cannot serve the pool yet", "pool", c.Name, "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.d != d {
		return // tgtd died meanwhile: the next round rebuilds
	}
	s.conf, s.san, s.space = c, sn, nil
	s.applied = wanted
	s.log.Info("serving the pool", "pool", c.Name, "portal", s.daemon.Listen)
}

// apply gives each volume's target the access list its record holds
// (wanted), where tgtd has another. Only run's goroutine calls it.
func (s *sanServer) apply(ctx context.Context, sn *san.SAN, wanted map[string][]string) {
	for id := range s.applied {
		if _, ok := wanted[id]; !ok {
			delete(s.applied, id)
		}
	}
	for id, hosts := range wanted {
		if have, ok := s.applied[id]; ok && slices.Equal(have, hosts) {
			continue
		}
		err := sn.SetAllowed(ctx, id, hosts)
		switch {
		case api.IsNotFound(err):
			// No target yet (being made): its job makes it admitting
			// nobody, and its next record comes back here.
		case err != nil:
			s.log.Warn("cannot apply a volume's access list; trying again", "id", id, "hosts", hosts, "err", err)
		default:
			s.applied[id] = hosts
			s.log.Info("volume access list applied", "id", id, "hosts", hosts)
		}
	}
}

// Driver implements agent.Served: a storage server serves its one pool
// and nothing else. A job waits (a little) for the SAN to be ready.
func (s *sanServer) Driver(ctx context.Context, name string) (pool.Driver, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.wait)
	defer cancel()
	for {
		s.mu.Lock()
		sn, conf, started := s.san, s.conf, s.d != nil
		s.mu.Unlock()
		switch {
		case sn != nil && conf.Name == name:
			return sn, true, nil
		case sn != nil:
			return nil, true, api.Errorf(api.ErrNotFound, "storage server %s serves pool %q, not %q", s.name, conf.Name, name)
		}
		select {
		case <-ctx.Done():
			if !started {
				return nil, true, api.Errorf(api.ErrUnavailable, "storage server %s: tgtd is not running (it is being started again)", s.name)
			}
			return nil, true, api.Errorf(api.ErrUnavailable, "storage server %s does not serve pool %q (yet): no pool names it, or its SAN is not ready", s.name, name)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Spaces implements agent.Served: the served pool's space as last read
// (never waiting on a SAN that is busy making a volume).
func (s *sanServer) Spaces(context.Context) []api.PoolSpace {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.san == nil || s.space == nil {
		return nil
	}
	c := s.space
	return []api.PoolSpace{{Name: s.conf.Name, Type: api.PoolISCSI, Shared: true, Manages: true,
		SizeBytes: c.SizeBytes, UsedBytes: c.UsedBytes, FreeBytes: c.FreeBytes}}
}

// Volumes implements agent.Served: it takes the records' access lists
// and has run apply them.
func (s *sanServer) Volumes(_ context.Context, vols []api.Volume, snapshot bool) {
	s.mu.Lock()
	if snapshot {
		s.wanted, s.synced = map[string][]string{}, true
	}
	for _, v := range vols {
		if v.State == api.VolumeDeleting {
			delete(s.wanted, v.ID)
			continue
		}
		hosts := slices.Clone(v.Access)
		slices.Sort(hosts)
		s.wanted[v.ID] = slices.Compact(hosts)
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}
