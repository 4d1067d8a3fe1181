package server

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/authz"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store"
)

// addUser records a user with a token of its role and returns the token.
func (h *apiHarness) addUser(name, role, project string) string {
	h.t.Helper()
	ctx := context.Background()
	err := h.st.CreateUser(ctx, store.User{User: api.User{Name: name, Role: role, Project: project, CreatedAt: time.Now()}})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		h.t.Fatal(err)
	}
	return h.addToken(name, role, time.Time{})
}

// addToken makes a token of an existing user, as the API would.
func (h *apiHarness) addToken(user, role string, expires time.Time) string {
	h.t.Helper()
	ctx := context.Background()
	u, err := h.st.GetUser(ctx, user)
	must(h.t, err)
	secret := authz.NewToken()
	must(h.t, h.st.CreateToken(ctx, secret, store.TokenInfo{User: user, UserGen: u.Gen, Role: role, Expires: expires, CreatedAt: time.Now()}))
	return secret
}

// newAuthHarness is the API harness with users admin (whose the
// harness's pre-users token is), olga (operator) and bob (viewer), and a
// cluster CA so that every route can answer.
func newAuthHarness(t *testing.T) (h *apiHarness, tokens map[string]string) {
	h = newAPIHarness(t)
	dir := t.TempDir()
	_, _, err := pki.Ensure(dir, []string{"localhost"})
	must(t, err)
	h.srv.cfg.PKIDir = dir
	tokens = map[string]string{
		"admin":    h.addUser("admin", api.RoleAdmin, ""),
		"operator": h.addUser("olga", api.RoleOperator, ""),
		"viewer":   h.addUser("bob", api.RoleViewer, ""),
	}
	return h, tokens
}

// TestEveryRouteIsGuarded enumerates the router's table: every route
// refuses a missing, wrong, expired or revoked token (401), refuses the
// roles below the one it needs (403, one line naming who and what), and
// lets the others through (never 401, 403 or 500). A route added to the
// table without an entry here fails.
func TestEveryRouteIsGuarded(t *testing.T) {
	h, tokens := newAuthHarness(t)
	// The role each route needs, written out here independently of the
	// rules in internal/authz.
	needs := map[string]authz.Role{
		"GET /v1/vms":                       authz.Viewer,
		"POST /v1/vms":                      authz.Operator,
		"GET /v1/vms/{name}":                authz.Viewer,
		"DELETE /v1/vms/{name}":             authz.Operator,
		"PATCH /v1/vms/{name}":              authz.Operator,
		"POST /v1/vms/{name}/{action}":      authz.Operator,
		"GET /v1/vms/{name}/logs":           authz.Operator,
		"GET /v1/vms/{name}/console":        authz.Operator,
		"POST /v1/vms/{name}/migrate":       authz.Operator,
		"GET /v1/vms/{name}/migration":      authz.Viewer,
		"DELETE /v1/vms/{name}/migration":   authz.Operator,
		"POST /v1/vms/{name}/recover":       authz.Operator,
		"GET /v1/hosts":                     authz.Viewer,
		"GET /v1/hosts/{name}":              authz.Viewer,
		"POST /v1/hosts/{name}/drain":       authz.Operator,
		"GET /v1/hosts/{name}/drain":        authz.Viewer,
		"POST /v1/hosts/{name}/resume":      authz.Operator,
		"DELETE /v1/hosts/{name}":           authz.Admin,
		"GET /v1/events":                    authz.Viewer,
		"GET /v1/networks":                  authz.Viewer,
		"GET /v1/images":                    authz.Viewer,
		"POST /v1/images/build":             authz.Admin,
		"PUT /v1/images/{name}":             authz.Admin,
		"DELETE /v1/images/{name}":          authz.Admin,
		"POST /v1/cluster/tokens":           authz.Admin,
		"GET /v1/cluster/servers":           authz.Viewer,
		"GET /v1/cluster/status":            authz.Viewer,
		"DELETE /v1/cluster/servers/{name}": authz.Admin,
		"GET /v1/audit":                     authz.Admin,
		"GET /v1/users":                     authz.Admin,
		"POST /v1/users":                    authz.Admin,
		"GET /v1/users/{name}":              authz.Admin, // another user's; one's own: see TestOwnThings
		"DELETE /v1/users/{name}":           authz.Admin,
		"PUT /v1/users/{name}/password":     authz.Admin, // another user's
		"GET /v1/tokens":                    authz.Viewer,
		"POST /v1/tokens":                   authz.Viewer,
		"DELETE /v1/tokens/{id}":            authz.Viewer,
		"GET /v1/projects":                  authz.Viewer,
		"POST /v1/projects":                 authz.Admin,
		"GET /v1/projects/{name}":           authz.Viewer,
		"DELETE /v1/projects/{name}":        authz.Admin,
		"GET /v1/volumes":                   authz.Viewer,
		"POST /v1/vms/{name}/attach":        authz.Operator,
		"POST /v1/vms/{name}/detach":        authz.Operator,
		"POST /v1/volumes":                  authz.Operator,
		"GET /v1/volumes/{name}":            authz.Viewer,
		"DELETE /v1/volumes/{name}":         authz.Operator,
		"POST /v1/volumes/{name}/resize":    authz.Operator,
		"GET /v1/pools":                     authz.Viewer,
		"GET /v1/pools/{name}":              authz.Viewer,
		"POST /v1/pools":                    authz.Admin,
		"DELETE /v1/pools/{name}":           authz.Admin,
	}
	// Paths that exercise a route without changing what matters: unknown
	// objects, or (an image import) a conflict before any work.
	concrete := map[string]string{"PUT /v1/images/{name}": "/v1/images/tiny"}
	fill := strings.NewReplacer("{name}", "nosuch", "{action}", "stop", "{id}", "000000000000")

	expired := h.addToken("olga", api.RoleOperator, time.Now().Add(-time.Second))
	revoked := h.addToken("olga", api.RoleOperator, time.Time{})
	h.call("DELETE", "/v1/tokens/"+store.TokenID(revoked), nil).decodeOK(t, http.StatusNoContent, nil)
	refusedToken := map[string]string{"no": "", "wrong": "shoal_" + strings.Repeat("0", 48), "expired": expired, "revoked": revoked}
	users := map[authz.Role]string{authz.Admin: "admin", authz.Operator: "olga", authz.Viewer: "bob"}
	// A project-scoped operator, and a VM and a project that are not its.
	dan := h.addUser("dan", api.RoleOperator, "dev")
	ctx := context.Background()
	_, err := h.st.CreateVM(ctx, api.VMSpec{Name: "other", ID: "0123456789ab", Network: "default", IP: "10.57.0.200", MAC: "52:54:00:aa:bb:cc"})
	must(t, err)
	must(t, h.st.CreateProject(ctx, api.Project{Name: "other"}))

	seen := map[string]bool{}
	for _, rt := range h.srv.routeTable() {
		key := rt.method + " " + rt.pattern
		if seen[key] {
			t.Errorf("route %s is in the table twice", key)
		}
		seen[key] = true
		if rt.method != "GET" && rt.act == "" {
			t.Errorf("route %s changes something but has no audit action", key)
		}
		need, ok := needs[key]
		if !ok {
			t.Errorf("route %s has no expectation in this test: say which role it needs", key)
			continue
		}
		path, ok := concrete[key]
		if !ok {
			path = fill.Replace(rt.pattern)
		}
		var body any
		if rt.method != "GET" && rt.method != "DELETE" {
			body = "{}"
		}
		// To the project-scoped operator, another project's VM (or the
		// project itself) does not exist, whatever the route.
		if strings.HasPrefix(rt.pattern, "/v1/vms/{name}") || strings.HasPrefix(rt.pattern, "/v1/projects/{name}") {
			r := h.callToken(dan, rt.method, strings.Replace(path, "nosuch", "other", 1), body)
			if r.code != http.StatusNotFound || !strings.Contains(string(r.body), `"other\" not found`) {
				t.Errorf("%s on another project's object as dan (operator of dev): %d %s, want 404", key, r.code, r.body)
			}
		}
		if key == "POST /v1/vms" {
			h.callToken(dan, rt.method, path, api.CreateVMRequest{Name: "x", Image: "tiny", Project: "other"}).
				wantError(t, http.StatusForbidden, "forbidden", "user dan (operator) of project dev may not create VMs in project other")
		}
		for kind, tok := range refusedToken {
			r := h.callToken(tok, rt.method, path, body)
			if r.code != http.StatusUnauthorized {
				t.Errorf("%s with a %s token: %d %s, want 401", key, kind, r.code, r.body)
			}
		}
		for _, role := range []authz.Role{authz.Admin, authz.Operator, authz.Viewer} {
			r := h.callToken(tokens[role.String()], rt.method, path, body)
			switch {
			case r.code == http.StatusInternalServerError:
				t.Errorf("%s as %s: 500 %s", key, role, r.body)
			case role < need:
				if r.code != http.StatusForbidden {
					t.Errorf("%s as %s: %d %s, want 403", key, role, r.code, r.body)
					continue
				}
				r.wantError(t, http.StatusForbidden, "forbidden", "user "+users[role]+" ("+role.String()+") may not ", "needs the "+need.String()+" role")
				if strings.Contains(string(r.body[:len(r.body)-1]), "\n") {
					t.Errorf("%s as %s: refusal of more than one line: %s", key, role, r.body)
				}
			case r.code == http.StatusUnauthorized || r.code == http.StatusForbidden:
				t.Errorf("%s as %s: %d %s, want it let through", key, role, r.code, r.body)
			}
		}
	}
	for key := range needs {
		if !seen[key] {
			t.Errorf("route %s is expected here but not in the router's table", key)
		}
	}
	// Paths outside the table: 401 without a token, 404 with one.
	h.callToken("", "GET", "/v1/nothing", nil).wantError(t, http.StatusUnauthorized, "unauthorized")
	h.callToken(tokens["viewer"], "GET", "/v1/nothing", nil).wantError(t, http.StatusNotFound, "not_found")
}

// TestOwnThings: any user sees its own record, sets its own password and
// keeps its own tokens; not another's.
func TestOwnThings(t *testing.T) {
	h, tokens := newAuthHarness(t)
	bob := tokens["viewer"]
	var u api.User
	h.callToken(bob, "GET", "/v1/users/bob", nil).decodeOK(t, http.StatusOK, &u)
	if u.Name != "bob" || u.Role != api.RoleViewer || u.HasPassword {
		t.Errorf("bob's record: %+v", u)
	}
	h.callToken(bob, "GET", "/v1/users/olga", nil).wantError(t, http.StatusForbidden, "forbidden", "user bob (viewer) may not see other users")
	h.callToken(bob, "PUT", "/v1/users/bob/password", api.PasswordRequest{Password: "correct horse"}).decodeOK(t, http.StatusNoContent, nil)
	h.callToken(bob, "GET", "/v1/users/bob", nil).decodeOK(t, http.StatusOK, &u)
	if !u.HasPassword {
		t.Error("bob's password was not set")
	}
	h.callToken(bob, "PUT", "/v1/users/olga/password", api.PasswordRequest{Password: "correct horse"}).
		wantError(t, http.StatusForbidden, "forbidden", "may not set other users' passwords")

	// Tokens: one's own, at most one's role; another's only as admin.
	var mine api.Token
	h.callToken(bob, "POST", "/v1/tokens", api.CreateTokenRequest{Name: "ci", Expires: "30d"}).decodeOK(t, http.StatusCreated, &mine)
	if mine.User != "bob" || mine.Role != api.RoleViewer || mine.Token == "" || mine.Expires == nil || time.Until(*mine.Expires) < 29*24*time.Hour {
		t.Errorf("bob's new token: %+v", mine)
	}
	h.callToken(bob, "POST", "/v1/tokens", api.CreateTokenRequest{Role: api.RoleOperator}).
		wantError(t, http.StatusForbidden, "forbidden", "cannot have the operator role")
	h.callToken(bob, "POST", "/v1/tokens", api.CreateTokenRequest{User: "olga"}).
		wantError(t, http.StatusForbidden, "forbidden", "user bob (viewer) may not make tokens for other users")
	var olgas api.Token
	h.callToken(tokens["admin"], "POST", "/v1/tokens", api.CreateTokenRequest{User: "olga", Role: api.RoleViewer}).decodeOK(t, http.StatusCreated, &olgas)
	if olgas.User != "olga" || olgas.Role != api.RoleViewer {
		t.Errorf("olga's token made by admin: %+v", olgas)
	}
	h.callToken(tokens["admin"], "POST", "/v1/tokens", api.CreateTokenRequest{User: "bob", Role: api.RoleAdmin}).
		wantError(t, http.StatusForbidden, "forbidden", "a token of user bob (viewer) cannot have the admin role")
	// A viewer token of an admin makes no admin token.
	h.callToken(mintVia(t, h, tokens["admin"], api.RoleViewer), "POST", "/v1/tokens", api.CreateTokenRequest{Role: api.RoleAdmin}).
		wantError(t, http.StatusForbidden, "forbidden", "cannot have the admin role")

	var list []api.Token
	h.callToken(bob, "GET", "/v1/tokens", nil).decodeOK(t, http.StatusOK, &list)
	for _, tk := range list {
		if tk.User != "bob" || tk.Token != "" {
			t.Errorf("bob's token list shows %+v", tk)
		}
	}
	if len(list) != 2 {
		t.Errorf("bob lists %d tokens, want his 2: %+v", len(list), list)
	}
	h.callToken(tokens["admin"], "GET", "/v1/tokens?user=olga", nil).decodeOK(t, http.StatusOK, &list)
	if len(list) != 2 { // the harness's and the admin-made one
		t.Errorf("admin lists %d tokens of olga, want 2: %+v", len(list), list)
	}
	h.callToken(bob, "DELETE", "/v1/tokens/"+olgas.ID, nil).wantError(t, http.StatusForbidden, "forbidden", "may not revoke other users' tokens")
	h.callToken(bob, "DELETE", "/v1/tokens/"+mine.ID, nil).decodeOK(t, http.StatusNoContent, nil)
	h.callToken(mine.Token, "GET", "/v1/vms", nil).wantError(t, http.StatusUnauthorized, "unauthorized", "invalid API token")
	h.callToken(tokens["admin"], "DELETE", "/v1/tokens/"+olgas.ID, nil).decodeOK(t, http.StatusNoContent, nil)
}

func mintVia(t *testing.T, h *apiHarness, token, role string) string {
	t.Helper()
	var tk api.Token
	h.callToken(token, "POST", "/v1/tokens", api.CreateTokenRequest{Role: role}).decodeOK(t, http.StatusCreated, &tk)
	return tk.Token
}

// TestUserLifecycle: users are made with a valid role, listed, and
// deleted with their tokens; a token of a deleted user is refused even
// when a new user of the same name is made; the last admin stays.
func TestUserLifecycle(t *testing.T) {
	h, tokens := newAuthHarness(t)
	admin := tokens["admin"]
	h.callToken(admin, "POST", "/v1/users", api.CreateUserRequest{Name: "alice", Role: "root"}).
		wantError(t, http.StatusBadRequest, "invalid", `role "root" is invalid: use admin, operator or viewer`)
	h.callToken(admin, "POST", "/v1/users", api.CreateUserRequest{Name: "Alice", Role: api.RoleViewer}).
		wantError(t, http.StatusBadRequest, "invalid", "must start with a lower-case letter")
	h.callToken(admin, "POST", "/v1/users", api.CreateUserRequest{Name: "alice", Role: api.RoleOperator, Password: "short"}).
		wantError(t, http.StatusBadRequest, "invalid", "a password has 8 to")
	// An admin acts on the whole cluster: confined to a project, it could
	// still make tokens of unconfined admins.
	h.callToken(admin, "POST", "/v1/users", api.CreateUserRequest{Name: "alice", Role: api.RoleAdmin, Project: "dev"}).
		wantError(t, http.StatusBadRequest, "invalid", "cannot be confined to project")
	var u api.User
	h.callToken(admin, "POST", "/v1/users", api.CreateUserRequest{Name: "alice", Role: api.RoleOperator, Password: "correct horse"}).
		decodeOK(t, http.StatusCreated, &u)
	if u.Name != "alice" || u.Role != api.RoleOperator || !u.HasPassword {
		t.Errorf("created %+v", u)
	}
	rec, err := h.st.GetUser(context.Background(), "alice")
	must(t, err)
	if !authz.CheckPassword(rec.PasswordHash, "correct horse") || strings.Contains(rec.PasswordHash, "correct") {
		t.Errorf("stored password hash %q", rec.PasswordHash)
	}
	h.callToken(admin, "POST", "/v1/users", api.CreateUserRequest{Name: "alice", Role: api.RoleViewer}).
		wantError(t, http.StatusConflict, "conflict", `user "alice" already exists`)
	var users []api.User
	h.callToken(admin, "GET", "/v1/users", nil).decodeOK(t, http.StatusOK, &users)
	if len(users) != 4 {
		t.Errorf("users %+v, want admin, alice, bob, olga", users)
	}
	alice := h.addToken("alice", api.RoleOperator, time.Time{})
	h.callToken(alice, "GET", "/v1/vms", nil).decodeOK(t, http.StatusOK, nil)
	h.callToken(admin, "DELETE", "/v1/users/alice", nil).decodeOK(t, http.StatusNoContent, nil)
	h.callToken(alice, "GET", "/v1/vms", nil).wantError(t, http.StatusUnauthorized, "unauthorized")
	// A token that outlived its user (made in a race with the deletion)
	// does not come back to life with a new user of the name.
	must(t, h.st.PutToken(context.Background(), "orphan-token-000", store.TokenInfo{User: "alice", UserGen: rec.Gen, Role: api.RoleAdmin}))
	h.addUser("alice", api.RoleViewer, "")
	h.callToken("orphan-token-000", "GET", "/v1/vms", nil).wantError(t, http.StatusUnauthorized, "unauthorized", "belongs to user alice, who was deleted")

	h.callToken(admin, "DELETE", "/v1/users/admin", nil).wantError(t, http.StatusConflict, "conflict", "the last admin")
	h.callToken(admin, "DELETE", "/v1/users/nosuch", nil).wantError(t, http.StatusNotFound, "not_found", `user "nosuch" not found`)
}

// TestTokenRoleFollowsUser: a token's role is at most its user's current
// one, at every request.
func TestTokenRoleFollowsUser(t *testing.T) {
	h, _ := newAuthHarness(t)
	ctx := context.Background()
	tok := h.addUser("carol", api.RoleOperator, "")
	h.callToken(tok, "POST", "/v1/hosts/host1/resume", nil).wantError(t, http.StatusConflict, "conflict")
	// The user's role is lowered behind the API's back: the token follows.
	u, err := h.st.GetUser(ctx, "carol")
	must(t, err)
	u.Role = api.RoleViewer
	must(t, h.st.DeleteUser(ctx, "carol"))
	must(t, h.st.CreateUser(ctx, u))
	must(t, h.st.PutToken(ctx, "carol-token-0001", store.TokenInfo{User: "carol", Role: api.RoleOperator}))
	h.callToken("carol-token-0001", "POST", "/v1/hosts/host1/resume", nil).
		wantError(t, http.StatusForbidden, "forbidden", "user carol (viewer) may not drain or resume hosts: it needs the operator role")
}

// TestPreUsersToken: a token recorded before users existed (no user) is
// admin's: it works while there are no users, and as user admin's after.
func TestPreUsersToken(t *testing.T) {
	h := newAPIHarness(t)
	h.call("GET", "/v1/users", nil).decodeOK(t, http.StatusOK, nil)
	h.addUser("admin", api.RoleAdmin, "")
	var list []api.Token
	h.call("GET", "/v1/tokens", nil).decodeOK(t, http.StatusOK, &list)
	if len(list) != 2 || list[0].User != "admin" || list[0].ID != store.TokenID(apiTestToken) {
		t.Errorf("tokens %+v", list)
	}
	h.call("DELETE", "/v1/tokens/"+store.TokenID(apiTestToken), nil).decodeOK(t, http.StatusNoContent, nil)
	h.call("GET", "/v1/vms", nil).wantError(t, http.StatusUnauthorized, "unauthorized")
}

// TestDeleteUserWithManyTokens: a user with more tokens than etcd takes
// in one transaction is deleted with all of them.
func TestDeleteUserWithManyTokens(t *testing.T) {
	h, tokens := newAuthHarness(t)
	var last string
	for range 150 {
		last = h.addToken("bob", api.RoleViewer, time.Time{})
	}
	h.callToken(tokens["admin"], "DELETE", "/v1/users/bob", nil).decodeOK(t, http.StatusNoContent, nil)
	h.callToken(last, "GET", "/v1/vms", nil).wantError(t, http.StatusUnauthorized, "unauthorized")
	var list []api.Token
	h.callToken(tokens["admin"], "GET", "/v1/tokens?user=bob", nil).decodeOK(t, http.StatusOK, &list)
	if len(list) != 0 {
		t.Errorf("%d tokens of bob left after deleting him", len(list))
	}
}
