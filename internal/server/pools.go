package server

import (
	"crypto/rand"
	"net/http"
	"slices"
	"time"

	"github.com/shoalvm/shoal/internal/audit"

	"github.com/shoalvm/shoal/internal/api"
)

// poolViews is every pool that an up host reports, with its space and
// volumes: a shared pool's space as one host sees it, a local pool's
// summed over its hosts. Pure.
func poolViews(hosts []api.Host, vols []api.Volume, defined []api.PoolConfig) []api.Pool {
	byName := map[string]*api.Pool{}
	managed := map[string]bool{} // pools whose storage server reported
	var names []string
	for _, h := range hosts {
		if h.State == api.HostDown {
			continue
		}
		for _, ps := range h.Storage {
			p := byName[ps.Name]
			if p == nil {
				p = &api.Pool{Name: ps.Name, Type: ps.Type, Shared: ps.Shared, Hosts: []string{}}
				byName[ps.Name] = p
				names = append(names, ps.Name)
			}
			p.Hosts = append(p.Hosts, h.Name)
			switch {
			case ps.Manages: // the storage server's figures win
				p.SizeBytes, p.UsedBytes, p.FreeBytes = ps.SizeBytes, ps.UsedBytes, ps.FreeBytes
				managed[ps.Name] = true
				continue
			case managed[ps.Name]:
				continue
			case ps.Shared:
				// The same space, seen again: as the host that sees the
				// most of it says (a host that only reaches a network
				// pool reports no space).
				if ps.SizeBytes > p.SizeBytes {
					p.SizeBytes, p.UsedBytes, p.FreeBytes = ps.SizeBytes, ps.UsedBytes, ps.FreeBytes
				}
				continue
			}
			p.SizeBytes += ps.SizeBytes
			p.UsedBytes += ps.UsedBytes
			p.FreeBytes += ps.FreeBytes
		}
	}
	for _, c := range defined { // reached by no host that is up: shown all the same
		if byName[c.Name] == nil {
			byName[c.Name] = &api.Pool{Name: c.Name, Type: c.Type, Shared: true, Hosts: []string{}}
			names = append(names, c.Name)
		}
	}
	for _, v := range vols {
		if p := byName[v.Pool]; p != nil {
			p.Volumes++
		}
	}
	slices.Sort(names)
	out := make([]api.Pool, 0, len(names))
	for _, n := range names {
		slices.Sort(byName[n].Hosts)
		out = append(out, *byName[n])
	}
	return out
}

// volumeHost chooses the host that makes a volume of size bytes in pool:
// the storage server that manages the pool if one does (whichever other
// hosts reach it), else want if given (it must be up and reach the
// pool), else for a shared pool the first up host by name that reaches
// it, while a local pool's volume needs want unless one host alone has
// the pool. It refuses a volume larger than the pool's free space as the
// host last reported it. Pure.
func volumeHost(hosts []api.Host, pool, want string, size int64) (string, error) {
	for _, h := range hosts {
		if ps, ok := poolOf(h, pool); ok && ps.Manages {
			switch {
			case want != "" && want != h.Name:
				return "", api.Errorf(api.ErrInvalid, "pool %q is served by storage server %s: its volumes are made there (leave out --host)", pool, h.Name)
			case h.State != api.HostUp:
				return "", api.Errorf(api.ErrUnavailable, "storage server %s of pool %q is %s: it cannot make a volume now", h.Name, pool, h.State)
			}
			return h.Name, fits(pool, ps, h.Name, size)
		}
	}
	var best string
	for _, h := range hosts {
		ps, ok := poolOf(h, pool)
		if !ok || (want != "" && h.Name != want) {
			continue
		}
		if h.State != api.HostUp {
			if want != "" {
				return "", api.Errorf(api.ErrUnavailable, "host %s is %s: it cannot make a volume now", want, h.State)
			}
			continue
		}
		if !ps.Shared && want == "" && best != "" {
			return "", api.Errorf(api.ErrInvalid, "pool %q is each host's own: say on which host the volume lives (--host)", pool)
		}
		if err := fits(pool, ps, h.Name, size); err != nil {
			return "", err
		}
		if best == "" || h.Name < best {
			best = h.Name
		}
	}
	if best == "" {
		if want != "" {
			return "", api.Errorf(api.ErrNotFound, "host %q not found or has no pool %q: see 'shoal pool list'", want, pool)
		}
		return "", api.Errorf(api.ErrNotFound, "pool %q not found on any host that is up: see 'shoal pool list'", pool)
	}
	return best, nil
}

// fits refuses a volume of size bytes that pool's space ps, as host
// reported it, has no room for.
func fits(pool string, ps api.PoolSpace, host string, size int64) error {
	if size > ps.FreeBytes {
		return api.Errorf(api.ErrCapacity, "pool %q has %s free (on %s): a volume of %s does not fit", pool, api.FormatSize(ps.FreeBytes), host, api.FormatSize(size))
	}
	return nil
}

// defaultVolumePool is where a volume goes when its request names no
// pool: shared if a host has it, else local. Pure.
func defaultVolumePool(hosts []api.Host) string {
	for _, h := range hosts {
		if ps, ok := poolOf(h, "shared"); ok && ps.Shared {
			return "shared"
		}
	}
	return "local"
}

func poolOf(h api.Host, name string) (api.PoolSpace, bool) {
	for _, ps := range h.Storage {
		if ps.Name == name {
			return ps, true
		}
	}
	return api.PoolSpace{}, false
}

func (s *Server) pools(r *http.Request) ([]api.Pool, error) {
	hosts, err := s.hostViews(r.Context())
	if err != nil {
		return nil, err
	}
	vols, _, err := s.st.ListVolumes(r.Context())
	if err != nil {
		return nil, err
	}
	defined, err := s.st.ListPoolConfigs(r.Context())
	if err != nil {
		return nil, err
	}
	return poolViews(hosts, vols, defined), nil
}

func (s *Server) listPools(w http.ResponseWriter, r *http.Request) error {
	ps, err := s.pools(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ps)
	return nil
}

func (s *Server) getPool(w http.ResponseWriter, r *http.Request) error {
	ps, err := s.pools(r)
	if err != nil {
		return err
	}
	name := r.PathValue("name")
	for _, p := range ps {
		if p.Name == name {
			writeJSON(w, http.StatusOK, p)
			return nil
		}
	}
	return api.Errorf(api.ErrNotFound, "pool %q not found on any host that is up: see 'shoal pool list'", name)
}

func (s *Server) createPool(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	var c api.PoolConfig
	if err := decode(r, &c); err != nil {
		return err
	}
	audit.SetObject(ctx, "pool/"+c.Name)
	if err := c.Check(); err != nil {
		return err
	}
	hosts, err := s.hostViews(ctx)
	if err != nil {
		return err
	}
	for _, h := range hosts {
		if _, ok := poolOf(h, c.Name); ok && h.Role != api.HostRoleStorage {
			return api.Errorf(api.ErrConflict, "pool %q is a directory pool of host %s already", c.Name, h.Name)
		}
	}
	if c.Server != "" {
		i := slices.IndexFunc(hosts, func(h api.Host) bool { return h.Name == c.Server })
		if i < 0 || hosts[i].Role != api.HostRoleStorage {
			return api.Errorf(api.ErrNotFound, "storage server %q not found: start one with 'shoal storage-server' (see 'shoal host list')", c.Server)
		}
		if c.CHAPUser == "" {
			c.CHAPUser, c.CHAPSecret = "shoal", randomSecret()
		}
		c.Portal = hosts[i].Portal
	}
	if err := probePool(ctx, c); err != nil {
		return err
	}
	c.CreatedAt = time.Now().UTC()
	if err := s.st.CreatePoolConfig(ctx, c); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, c.Public())
	return nil
}

func (s *Server) deletePool(w http.ResponseWriter, r *http.Request) error {
	if err := s.st.DeletePoolConfig(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// randomSecret is a CHAP secret of 16 letters and digits.
func randomSecret() string {
	const chars = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = chars[int(b[i])%len(chars)]
	}
	return string(b)
}
