package server

import (
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/audit"
	"github.com/shoalvm/shoal/internal/authz"
	"github.com/shoalvm/shoal/internal/store"
)

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) error {
	users, err := s.st.ListUsers(r.Context())
	if err != nil {
		return err
	}
	out := make([]api.User, 0, len(users))
	for _, u := range users {
		out = append(out, u.View())
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) createUser(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateUserRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	audit.SetObject(r.Context(), "user/"+req.Name)
	if err := api.ValidateName("user", req.Name); err != nil {
		return err
	}
	role, err := authz.ParseRole(req.Role)
	if err != nil {
		return err
	}
	if req.Project != "" {
		if err := api.ValidateName("project", req.Project); err != nil {
			return err
		}
		if role == authz.Admin {
			return api.Errorf(api.ErrInvalid, "an admin acts on the whole cluster and cannot be confined to project %q: give the user the operator or viewer role", req.Project)
		}
	}
	u := store.User{User: api.User{Name: req.Name, Role: req.Role, Project: req.Project, CreatedAt: time.Now().UTC()}}
	if req.Password != "" {
		h, err := authz.HashPassword(req.Password)
		if err != nil {
			return err
		}
		u.PasswordHash = h
	}
	if err := s.st.CreateUser(r.Context(), u); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, u.View())
	return nil
}

func (s *Server) getUser(w http.ResponseWriter, r *http.Request) error {
	u, err := s.st.GetUser(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, u.View())
	return nil
}

func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request) error {
	if err := s.st.DeleteUser(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) setPassword(w http.ResponseWriter, r *http.Request) error {
	var req api.PasswordRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	h, err := authz.HashPassword(req.Password)
	if err != nil {
		return err
	}
	if err := s.st.SetPassword(r.Context(), r.PathValue("name"), h); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func tokenView(t store.TokenInfo) api.Token {
	v := api.Token{ID: t.ID, Name: t.Name, User: t.Owner(), Role: t.Role, CreatedAt: t.CreatedAt}
	if !t.Expires.IsZero() {
		e := t.Expires
		v.Expires = &e
	}
	return v
}

// createToken makes a token for the caller or (an admin's call) for
// another user, with at most the role of both the user and the caller.
func (s *Server) createToken(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateTokenRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	id, _ := authz.FromContext(r.Context())
	if req.User == "" {
		req.User = id.User
	}
	audit.SetObject(r.Context(), "user/"+req.User)
	if err := s.authorize(r, authz.Request{Perm: authz.UseTokens, Object: authz.Object{Owner: req.User}, What: "make tokens for other users"}); err != nil {
		return err
	}
	if req.Name != "" {
		if err := api.ValidateName("token", req.Name); err != nil {
			return err
		}
	}
	asked := authz.None
	if req.Role != "" {
		var err error
		if asked, err = authz.ParseRole(req.Role); err != nil {
			return err
		}
	}
	now := time.Now().UTC()
	t := store.TokenInfo{Name: req.Name, User: req.User, CreatedAt: now}
	if req.Expires != "" {
		d, err := api.ParseDuration(req.Expires)
		if err != nil {
			return err
		}
		t.Expires = now.Add(d)
	}
	u, err := s.st.GetUser(r.Context(), req.User)
	if err != nil {
		return err
	}
	userRole, _ := authz.ParseRole(u.Role)
	if req.User == id.User {
		// A token never has more rights than the one that made it either.
		userRole = authz.Lower(userRole, id.Role)
	}
	role, err := authz.TokenRole(userRole, asked, req.User)
	if err != nil {
		return err
	}
	t.Role, t.UserGen = role.String(), u.Gen
	secret := authz.NewToken()
	if err := s.st.CreateToken(r.Context(), secret, t); err != nil {
		return err
	}
	t.ID = store.TokenID(secret)
	audit.SetObject(r.Context(), "token/"+t.ID)
	v := tokenView(t)
	v.Token = secret
	writeJSON(w, http.StatusCreated, v)
	return nil
}

// listTokens lists the caller's tokens, or everyone's for an admin
// (?user= narrows it).
func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) error {
	tokens, err := s.st.ListTokens(r.Context())
	if err != nil {
		return err
	}
	id, _ := authz.FromContext(r.Context())
	all := authz.Decide(id, authz.Request{Perm: authz.UseTokens}) == nil
	user := r.URL.Query().Get("user")
	out := make([]api.Token, 0, len(tokens))
	for _, t := range tokens {
		if (all || t.Owner() == id.User) && (user == "" || t.Owner() == user) {
			out = append(out, tokenView(t))
		}
	}
	slices.SortFunc(out, func(a, b api.Token) int { return a.CreatedAt.Compare(b.CreatedAt) })
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) error {
	tid := strings.TrimSpace(r.PathValue("id"))
	_, err := s.st.RevokeToken(r.Context(), tid, func(t store.TokenInfo) error {
		return s.authorize(r, authz.Request{Perm: authz.UseTokens, Object: authz.Object{Owner: t.Owner()}, What: "revoke other users' tokens"})
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
