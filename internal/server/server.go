// Package server is Shoal's REST API: JSON over HTTPS with bearer-token
// authentication. Handlers validate input, write desired state to the
// store, and (unless asked not to) wait for the VM's host to converge.
package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/shoalvm/shoal/internal/agentapi"
	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/audit"
	"github.com/shoalvm/shoal/internal/authz"
	"github.com/shoalvm/shoal/internal/scheduler"
	"github.com/shoalvm/shoal/internal/store"
)

// Heartbeats tells when a host last renewed its liveness through this
// server.
type Heartbeats interface {
	LastHeartbeat(host string) (time.Time, bool)
}

// Config configures a Server.
type Config struct {
	ImageDir    string                   // image library on this machine
	Hosts       map[string]agentapi.Host // hosts inside this server's process
	HostTLS     *tls.Config              // reaches other hosts' own API (nil: none)
	AgentAPI    http.Handler             // serves /v1/agent/ to agents (nil: none)
	PKIDir      string                   // the cluster CA, to sign joining agents
	Heartbeats  Heartbeats               // when hosts last renewed their liveness here (optional)
	WaitTimeout time.Duration            // longest an API call waits for a host
	Policy      scheduler.Policy         // placement: spread or pack, overcommit
	DefaultPool string
	DefaultNet  string
	Name        string // this replica's name (default "server")
	URL         string // where hosts and users reach this replica
	// EmbeddedEtcd says the store is etcd embedded in the replicas: a
	// joining replica becomes one of its members.
	EmbeddedEtcd bool
	// MaxImageUpload is the largest image import taken, bytes (0:
	// DefaultMaxImageUpload).
	MaxImageUpload int64
	// Upkeep tunes the compaction and defragmentation of etcd.
	Upkeep UpkeepConfig
}

// Server serves the API.
type Server struct {
	cfg Config
	st  *store.Store
	log *slog.Logger
	mux *http.ServeMux

	cache      *placeCache // hosts, allocations, networks and images, for creates
	migrations *migrator
	events     *eventLog
	drains     *drainer
	failover   *failover
	images     *imageLibrary
	audit      *audit.Recorder
	upkeep     *upkeep
	leading    atomic.Bool // this replica runs the controllers
}

// New builds the API server.
func New(cfg Config, st *store.Store, log *slog.Logger) *Server {
	if cfg.WaitTimeout == 0 {
		cfg.WaitTimeout = 3 * time.Minute
	}
	if cfg.DefaultPool == "" {
		cfg.DefaultPool = "local"
	}
	if cfg.DefaultNet == "" {
		cfg.DefaultNet = "default"
	}
	ev := newEventLog(st, log)
	s := &Server{cfg: cfg, st: st, log: log, mux: http.NewServeMux(), cache: newPlaceCache(st, log),
		migrations: newMigrator(st, log, ev), events: ev, audit: audit.NewRecorder(auditSink{st}, store.NewEventID, log)}
	s.drains = newDrainer(st, log, ev, s.startMigration, func(ctx context.Context, rev int64, sp api.VMSpec) (string, error) {
		return s.cache.placeStopped(ctx, rev, sp, s.cfg.Policy)
	})
	s.failover = newFailover(st, s.cache, log, ev, cfg.Policy)
	s.images = newImageLibrary(cfg.ImageDir, s.self().Name, st, cfg.HostTLS, log)
	s.upkeep = newUpkeep(cfg.Upkeep, st, log, s.self().Name, s.leading.Load)
	s.routes()
	return s
}

// ImageFiles finds the files of the images this replica holds, for the
// agent API; it has one it lacks copied from another replica.
func (s *Server) ImageFiles() agentapi.ImageFiles { return s.images }

// ServeHTTP authenticates every request, then routes it: agents by their
// certificates, a joining machine by its join token, everyone else by API
// token.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, agentapi.Prefix) && s.cfg.AgentAPI != nil:
		s.cfg.AgentAPI.ServeHTTP(w, r)
		return
	case r.URL.Path == "/v1/join" && r.Method == http.MethodPost && s.cfg.PKIDir != "":
		s.serveJoin(w, r, "host.join", s.join)
		return
	case r.URL.Path == ServerJoinPath && r.Method == http.MethodPost && s.cfg.PKIDir != "":
		s.serveJoin(w, r, "server.join", s.joinServer)
		return
	}
	id, err := Authenticate(r.Context(), s.st, r.Header.Get("Authorization"), time.Now())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.mux.ServeHTTP(w, r.WithContext(authz.WithIdentity(r.Context(), id)))
}

// serveJoin serves a join, which its join token authorizes, and records
// it in the audit trail as act, whatever its result.
func (s *Server) serveJoin(w http.ResponseWriter, r *http.Request, act string, join func(http.ResponseWriter, *http.Request) error) {
	ctx, entry := audit.Begin(r.Context(), authz.Identity{}, r.RemoteAddr, act, strings.TrimSuffix(act, ".join"))
	err := join(w, r.WithContext(ctx))
	if err != nil {
		s.writeError(w, r, err)
	}
	s.audit.Record(entry.Finish(err))
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code, kind := api.HTTPStatus(err)
	msg := err.Error()
	if code == http.StatusInternalServerError {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, code, api.ErrorBody{Error: msg, Kind: kind})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads a JSON body strictly: unknown fields and trailing data are
// errors, reported as 400.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return api.Errorf(api.ErrInvalid, "request body is empty: send a JSON object")
		}
		return api.Errorf(api.ErrInvalid, "malformed JSON body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return api.Errorf(api.ErrInvalid, "malformed JSON body: trailing data after the object")
	}
	return nil
}

// wantWait reports whether the caller asked to wait for convergence
// (the default), and for how long.
func (s *Server) wantWait(r *http.Request) (waitSpec, error) {
	q := r.URL.Query()
	ws := waitSpec{wait: true, timeout: s.cfg.WaitTimeout}
	if q.Get("wait") == "false" || q.Get("wait") == "0" {
		ws.wait = false
	}
	if t := q.Get("timeout"); t != "" {
		v, err := time.ParseDuration(t)
		if err != nil || v <= 0 {
			return ws, api.Errorf(api.ErrInvalid, "timeout %q is not a duration such as 30s", t)
		}
		ws.timeout = v
	}
	return ws, nil
}

func notFoundHint(err error, hint string) error {
	if api.IsNotFound(err) {
		return fmt.Errorf("%w: %s", err, hint)
	}
	return err
}
