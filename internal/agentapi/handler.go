package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
)

// Handler serves the agent API (/v1/agent/...) on the server. Every call
// must come with an agent certificate signed by the cluster CA, and an
// agent speaks only for the host its certificate names.
type Handler struct {
	Local    *Local
	ImageDir string // the server's image library, which agents copy from
	// Images, if set, finds the files of an image in the library (else
	// they are taken from ImageDir as they are). Set it before serving.
	Images ImageFiles
	// Certs, if set, renews hosts' certificates and refuses revoked ones.
	Certs  Certs
	Log    *slog.Logger
	mux    *http.ServeMux
	routes []Route
}

// Route is one route of the agent API and the certificate roles
// (pki.OUAgent, pki.OUServer) it admits.
type Route struct {
	Pattern string
	Roles   []string
}

// Routes lists every route of the agent API, as the router has them.
func (h *Handler) Routes() []Route { return slices.Clone(h.routes) }

// ImageFiles finds the files of images on this server.
type ImageFiles interface {
	// File returns the path of file of image im, or an error if this
	// server does not hold the image. peer says another server asks.
	File(im api.Image, file string, peer bool) (string, error)
}

// Prefix is the path prefix of the agent API.
const Prefix = "/v1/agent/"

// NewHandler returns the agent API on top of a Local control plane.
func NewHandler(l *Local, imageDir string, log *slog.Logger) *Handler {
	h := &Handler{Local: l, ImageDir: imageDir, Log: log, mux: http.NewServeMux()}
	// A call is an agent's; an image's, another server's too (which
	// copies it: see server.imageLibrary).
	serve := func(roles []string, pattern string, fn func(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error) {
		h.routes = append(h.routes, Route{Pattern: pattern, Roles: roles})
		h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			name, role, ok := pki.PeerRole(r.TLS)
			if !ok || !slices.Contains(roles, role) {
				writeErr(w, api.Errorf(api.ErrUnauthorized, "the agent API needs an agent certificate of this cluster"))
				return
			}
			if role == pki.OUAgent {
				if err := h.revoked(r.Context(), name, r); err != nil {
					writeErr(w, err)
					return
				}
			}
			if err := fn(r.Context(), name, w, r); err != nil {
				writeErr(w, err)
			}
		})
	}
	route := func(pattern string, fn func(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error) {
		serve([]string{pki.OUAgent}, pattern, fn)
	}
	route("POST /v1/agent/register", h.register)
	route("GET /v1/agent/watch", h.watch)
	route("POST /v1/agent/status", h.report)
	route("GET /v1/agent/status/{id}", h.status)
	route("POST /v1/agent/guest-stopped", h.guestStopped)
	route("POST /v1/agent/removed", h.removed)
	route("POST /v1/agent/migration/ready", h.migrationReady)
	route("POST /v1/agent/migration/commit", h.migrationCommit)
	route("POST /v1/agent/migration/progress/{id}", h.migrationProgress)
	route("GET /v1/agent/networks/{name}", h.network)
	route("GET /v1/agent/pools", h.pools)
	serve([]string{pki.OUAgent, pki.OUServer}, "GET /v1/agent/images/{name}", h.image)
	serve([]string{pki.OUAgent, pki.OUServer}, "GET /v1/agent/images/{name}/files/{file}", h.imageFile)
	route("GET /v1/agent/servers", h.servers)
	route("POST /v1/agent/claim-start", h.claimStart)
	route("POST /v1/agent/crashed", h.crashed)
	route("POST /v1/agent/volume-done", h.volumeDone)
	route("POST /v1/agent/renew", h.renew)
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func writeErr(w http.ResponseWriter, err error) {
	code, kind := api.HTTPStatus(err)
	writeJSON(w, code, api.ErrorBody{Error: err.Error(), Kind: kind})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// MaxBody is the largest request body the agent API reads: a VM's spec
// with its user data, or a host's facts, is far smaller.
const MaxBody = 1 << 20

// Lease TTLs a host may ask for. Agents ask for 3 heartbeats (3 s by
// default, see agent.Config.LeaseTTL); failover waits for the lease to
// expire, so a host with a longer one would fail over that much later,
// and one with no bound would never fail over.
const (
	MinLeaseTTL = time.Second
	MaxLeaseTTL = 30 * time.Second
)

// readJSON reads the one JSON value of a request body, strictly: a body
// over MaxBody (413), an empty one, and data after the value are refused.
// Unknown fields are accepted, so that an agent newer than its server
// still registers during an upgrade.
func readJSON(r *http.Request, v any) error {
	// No ResponseWriter: the server drains or drops the rest of the body.
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, MaxBody))
	err := dec.Decode(v)
	var tooBig *http.MaxBytesError
	if err == nil {
		if _, err = dec.Token(); errors.Is(err, io.EOF) {
			return nil
		} else if !errors.As(err, &tooBig) {
			return api.Errorf(api.ErrInvalid, "malformed JSON body: data after the JSON value")
		}
	}
	switch {
	case errors.As(err, &tooBig):
		return api.Errorf(api.ErrTooLarge, "request body over %d bytes", MaxBody)
	case errors.Is(err, io.EOF):
		return api.Errorf(api.ErrInvalid, "request body is empty: send a JSON object")
	}
	return api.Errorf(api.ErrInvalid, "malformed JSON body: %v", err)
}

func notYours(host, what string) error {
	return api.Errorf(api.ErrUnauthorized, "agent of host %s may not speak for %s", host, what)
}

func (h *Handler) register(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error {
	var in api.Host
	if err := readJSON(r, &in); err != nil {
		return err
	}
	if in.Name != host {
		return notYours(host, "host "+in.Name)
	}
	ttl, err := time.ParseDuration(r.URL.Query().Get("ttl"))
	if err != nil || ttl < MinLeaseTTL || ttl > MaxLeaseTTL {
		return api.Errorf(api.ErrInvalid, "ttl must be a duration from %s to %s", MinLeaseTTL, MaxLeaseTTL)
	}
	if err := h.Local.Register(ctx, in, ttl); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// watch streams Events as JSON lines, with a keep-alive line every 10 s so
// that both ends notice a dead connection.
func (h *Handler) watch(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error {
	fl, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan Event, 64)
	errc := make(chan error, 1)
	go func() {
		errc <- h.Local.WatchVMs(ctx, host, func(ev Event) error {
			select {
			case events <- ev:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	enc := json.NewEncoder(w)
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		var ev Event
		select {
		case ev = <-events:
		case <-tick.C:
			// A host removed meanwhile (or whose certificate expired) gets
			// no more of the cluster's state over a stream it opened before.
			if err := h.revoked(ctx, host, r); err != nil {
				h.Log.Info("agent watch ended: its host is no longer admitted", "host", host, "err", err)
				return nil
			}
			ev = Event{Heartbeat: 10 * time.Second}
		case err := <-errc:
			h.Log.Debug("agent watch ended", "host", host, "err", err)
			return nil
		case <-ctx.Done():
			return nil
		}
		// An agent that stops reading must not pin this stream forever.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(30 * time.Second))
		if err := enc.Encode(ev); err != nil {
			return nil
		}
		if fl != nil {
			fl.Flush()
		}
	}
}

func (h *Handler) report(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error {
	var st api.VMStatus
	if err := readJSON(r, &st); err != nil {
		return err
	}
	if cur, err := h.Local.st.GetVM(ctx, st.Name); err != nil || st.Host != host || cur.Host != host || cur.ID != st.ID {
		return notYours(host, "vm "+st.Name)
	}
	if err := h.Local.Report(ctx, st); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// status answers a VM's last reported status to a host that owns the VM
// or takes part in its migration, and to no other.
func (h *Handler) status(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	st, err := h.Local.Status(ctx, id)
	if err != nil {
		return err
	}
	cur, err := h.Local.st.GetVM(ctx, st.Name)
	if err != nil && !api.IsNotFound(err) {
		return err
	}
	if err != nil || cur.ID != id || !involves(cur, host) {
		return notYours(host, "vm "+id)
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

// involves reports whether host owns VM s or is an end of its migration.
func involves(s api.VMSpec, host string) bool {
	m := s.Migration
	return s.Host == host || m != nil && (m.Source == host || m.Target == host)
}

// mine reads a spec from the body and checks the host owns that VM now;
// it returns the spec sent and the one stored.
func (h *Handler) mine(ctx context.Context, host string, r *http.Request) (api.VMSpec, api.VMSpec, error) {
	var s api.VMSpec
	if err := readJSON(r, &s); err != nil {
		return s, s, err
	}
	cur, err := h.Local.st.GetVM(ctx, s.Name)
	if err != nil {
		return s, cur, err
	}
	if cur.Host != host || cur.ID != s.ID {
		return s, cur, notYours(host, "vm "+s.Name)
	}
	return s, cur, nil
}

func (h *Handler) guestStopped(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error {
	s, _, err := h.mine(ctx, host, r)
	if err != nil {
		return err
	}
	v, err := h.Local.GuestStopped(ctx, s)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func (h *Handler) removed(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error {
	s, cur, err := h.mine(ctx, host, r)
	if api.IsNotFound(err) {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	if err != nil {
		return err
	}
	if !cur.Deleting {
		return api.Errorf(api.ErrConflict, "vm %q is not being deleted", s.Name)
	}
	if err := h.Local.Removed(ctx, s); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handler) migrationReady(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error {
	var c migrationCall
	if err := readJSON(r, &c); err != nil {
		return err
	}
	if c.Endpoint == nil {
		return api.Errorf(api.ErrInvalid, "no endpoint")
	}
	if err := h.Local.MigrationReady(ctx, host, c.Spec, *c.Endpoint); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handler) migrationCommit(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error {
	var c migrationCall
	if err := readJSON(r, &c); err != nil {
		return err
	}
	v, err := h.Local.CommitMigration(ctx, host, c.Spec)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func (h *Handler) migrationProgress(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error {
	var p api.MigrationProgress
	if err := readJSON(r, &p); err != nil {
		return err
	}
	if err := h.Local.MigrationProgress(ctx, host, r.PathValue("id"), p); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handler) network(ctx context.Context, _ string, w http.ResponseWriter, r *http.Request) error {
	n, err := h.Local.Network(ctx, r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, n)
	return nil
}

func (h *Handler) pools(ctx context.Context, _ string, w http.ResponseWriter, _ *http.Request) error {
	ps, err := h.Local.Pools(ctx)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ps)
	return nil
}

func (h *Handler) image(ctx context.Context, _ string, w http.ResponseWriter, r *http.Request) error {
	im, err := h.Local.Image(ctx, r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, im)
	return nil
}

// imageFiles are the files an image may have.
var imageFiles = map[string]bool{"disk.qcow2": true, "vmlinuz": true, "initrd.img": true}

func (h *Handler) imageFile(ctx context.Context, _ string, w http.ResponseWriter, r *http.Request) error {
	name, file := r.PathValue("name"), r.PathValue("file")
	im, err := h.Local.Image(ctx, name)
	if err != nil {
		return err
	}
	if !imageFiles[file] {
		return api.Errorf(api.ErrNotFound, "image %q has no file %q", name, file)
	}
	path := filepath.Join(h.ImageDir, name, file)
	if h.Images != nil {
		_, role, _ := pki.PeerRole(r.TLS)
		if path, err = h.Images.File(im, file, role == pki.OUServer); err != nil {
			return err
		}
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return api.Errorf(api.ErrNotFound, "image %q has no file %q", name, file)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Length", strconv.FormatInt(fi.Size(), 10))
	w.Header().Set("Content-Type", "application/octet-stream")
	_, err = io.Copy(w, f)
	return err
}

func (h *Handler) servers(ctx context.Context, _ string, w http.ResponseWriter, _ *http.Request) error {
	out, err := h.Local.Servers(ctx)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (h *Handler) crashed(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error {
	var c crashReport
	if err := readJSON(r, &c); err != nil {
		return err
	}
	if err := h.Local.Crashed(ctx, host, c.Spec, c.Reason, c.What, c.GaveUp); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handler) volumeDone(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error {
	var v api.Volume
	if err := readJSON(r, &v); err != nil {
		return err
	}
	if err := h.Local.VolumeDone(ctx, host, v); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handler) claimStart(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error {
	var s api.VMSpec
	if err := readJSON(r, &s); err != nil {
		return err
	}
	if err := h.Local.ClaimStart(ctx, host, s); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
