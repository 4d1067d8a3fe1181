package server

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/audit"
	"github.com/shoalvm/shoal/internal/authz"
)

// vmObject is the object of a route on VM {name}: its project, for a
// caller confined to one (to whom another project's VM does not exist).
func (s *Server) vmObject(r *http.Request) authz.Object {
	return inProject(r, "vm", func(ctx context.Context, name string) (string, error) {
		sp, err := s.st.GetVM(ctx, name)
		return sp.Project, err
	})
}

// inProject is the object of a route on the thing of kind {name} whose
// project project reads. A caller of no project costs no read; a thing
// that does not exist, or cannot be read, is left to the handler to
// report.
func inProject(r *http.Request, kind string, project func(ctx context.Context, name string) (string, error)) authz.Object {
	id, _ := authz.FromContext(r.Context())
	if id.Project == "" {
		return authz.Object{}
	}
	name := r.PathValue("name")
	p, err := project(r.Context(), name)
	if api.IsNotFound(err) {
		return authz.Object{} // the handler says so
	}
	what := kind + " " + strconv.Quote(name)
	if err != nil {
		// Its project unknown, it is not the caller's to act on.
		return authz.Object{Project: "\x00unknown", Name: what, Hint: "the cluster's state could not be read; try again"}
	}
	return authz.Object{Project: api.ProjectOf(p), Name: what, Hint: "see 'shoal " + kind + " list'"}
}

// projectObject is the object of a route on project {name}.
func projectObject(r *http.Request) authz.Object {
	name := r.PathValue("name")
	return authz.Object{Project: name, Name: "project " + strconv.Quote(name), Hint: "see 'shoal project list'"}
}

// caller returns who calls r (the zero Identity, of no project, if
// unknown: routes refuse those before any handler runs).
func caller(ctx context.Context) authz.Identity {
	id, _ := authz.FromContext(ctx)
	return id
}

func (s *Server) createProject(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateProjectRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	audit.SetObject(r.Context(), "project/"+req.Name)
	if err := api.ValidateName("project", req.Name); err != nil {
		return err
	}
	if req.Name == api.DefaultProject {
		return api.Errorf(api.ErrConflict, "project %q always exists and has no limits", api.DefaultProject)
	}
	l, err := req.ParseLimits()
	if err != nil {
		return err
	}
	p := api.Project{Name: req.Name, Limits: l, CreatedAt: time.Now().UTC()}
	if err := s.st.CreateProject(r.Context(), p); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, p)
	return nil
}

// defaultProject is the default project with what its VMs take, counted
// from them.
func (s *Server) defaultProject(ctx context.Context) (api.Project, error) {
	p := api.Project{Name: api.DefaultProject}
	specs, _, err := s.st.ListVMs(ctx)
	if err != nil {
		return p, err
	}
	for _, sp := range specs {
		if api.ProjectOf(sp.Project) == api.DefaultProject {
			p.Usage = p.Usage.Add(api.UsageOf(sp))
		}
	}
	return p, nil
}

func (s *Server) listProjects(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	id := caller(ctx)
	out := []api.Project{}
	if id.Sees(api.DefaultProject) {
		p, err := s.defaultProject(ctx)
		if err != nil {
			return err
		}
		out = append(out, p)
	}
	ps, err := s.st.ListProjects(ctx)
	if err != nil {
		return err
	}
	for _, p := range ps {
		if id.Sees(p.Name) {
			out = append(out, p)
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getProject(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	var p api.Project
	var err error
	if name == api.DefaultProject {
		p, err = s.defaultProject(r.Context())
	} else {
		p, _, err = s.st.GetProject(r.Context(), name)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (s *Server) deleteProject(w http.ResponseWriter, r *http.Request) error {
	if r.PathValue("name") == api.DefaultProject {
		return api.Errorf(api.ErrConflict, "project %q always exists", api.DefaultProject)
	}
	if err := s.st.DeleteProject(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
