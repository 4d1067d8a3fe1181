package server

import (
	"context"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/authz"
	"github.com/shoalvm/shoal/internal/store"
)

// Authenticate finds who calls from the Authorization header
// ("Bearer TOKEN") at time now: the token's user and the role in effect,
// the lower of the token's and the user's current one. A missing, wrong,
// revoked or expired token, or one whose user was deleted, is
// api.ErrUnauthorized. It reads the store twice: the token, its user.
func Authenticate(ctx context.Context, st *store.Store, header string, now time.Time) (authz.Identity, error) {
	var id authz.Identity
	tok, ok := strings.CutPrefix(header, "Bearer ")
	if !ok && header != "" {
		return id, api.Errorf(api.ErrUnauthorized, "invalid API token: send 'Authorization: Bearer TOKEN'")
	}
	info, err := st.CheckToken(ctx, strings.TrimSpace(tok))
	if err != nil {
		return id, err
	}
	if !info.Expires.IsZero() && !now.Before(info.Expires) {
		return id, api.Errorf(api.ErrUnauthorized, "API token %s expired at %s: make a new one with 'shoal token create'",
			info.ID, info.Expires.UTC().Format(time.RFC3339))
	}
	role, err := authz.ParseRole(info.Role)
	if err != nil {
		return id, api.Errorf(api.ErrUnauthorized, "API token %s has no valid role (%q): make a new one", info.ID, info.Role)
	}
	id = authz.Identity{User: info.Owner(), Role: role, TokenID: info.ID}
	u, err := st.GetUser(ctx, id.User)
	if api.IsNotFound(err) && info.User == "" {
		// A token from before users existed is admin's; until the first
		// user is made ('shoal up' makes admin), it stands on its own.
		has, herr := st.HasUsers(ctx)
		if herr != nil {
			return id, herr
		}
		if !has {
			return id, nil
		}
	}
	if api.IsNotFound(err) || (err == nil && info.UserGen != 0 && info.UserGen != u.Gen) {
		return id, api.Errorf(api.ErrUnauthorized, "API token %s belongs to user %s, who was deleted", info.ID, id.User)
	}
	if err != nil {
		return id, err
	}
	userRole, _ := authz.ParseRole(u.Role) // a record without a valid role has none
	id.Role, id.Project = authz.Lower(role, userRole), u.Project
	return id, nil
}
