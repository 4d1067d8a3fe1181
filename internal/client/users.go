package client

import (
	"context"
	"net/url"

	"github.com/shoalvm/shoal/internal/api"
)

// ListUsers returns every user (admins only).
func (c *Client) ListUsers(ctx context.Context) ([]api.User, error) {
	var out []api.User
	return out, c.do(ctx, "GET", "/v1/users", nil, &out)
}

// CreateUser makes a user.
func (c *Client) CreateUser(ctx context.Context, req api.CreateUserRequest) (api.User, error) {
	var out api.User
	return out, c.do(ctx, "POST", "/v1/users", req, &out)
}

// GetUser returns one user.
func (c *Client) GetUser(ctx context.Context, name string) (api.User, error) {
	var out api.User
	return out, c.do(ctx, "GET", "/v1/users/"+esc(name), nil, &out)
}

// DeleteUser deletes a user and its tokens.
func (c *Client) DeleteUser(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/users/"+esc(name), nil, nil)
}

// SetPassword sets a user's password.
func (c *Client) SetPassword(ctx context.Context, name, password string) error {
	return c.do(ctx, "PUT", "/v1/users/"+esc(name)+"/password", api.PasswordRequest{Password: password}, nil)
}

// CreateToken makes an API token; the answer holds its secret, once.
func (c *Client) CreateToken(ctx context.Context, req api.CreateTokenRequest) (api.Token, error) {
	var out api.Token
	return out, c.do(ctx, "POST", "/v1/tokens", req, &out)
}

// ListTokens returns the caller's tokens, or everyone's for an admin;
// user, if set, narrows the list to that user's.
func (c *Client) ListTokens(ctx context.Context, user string) ([]api.Token, error) {
	path := "/v1/tokens"
	if user != "" {
		path += "?" + url.Values{"user": {user}}.Encode()
	}
	var out []api.Token
	return out, c.do(ctx, "GET", path, nil, &out)
}

// RevokeToken revokes a token by its id.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/tokens/"+esc(id), nil, nil)
}

// AuditQuery selects audit records: Since is a duration back from now
// (1h) or a time; empty fields select all.
type AuditQuery struct {
	Since, User, VM string
	Limit           int
}

// Audit returns the audit records that match q, oldest first (admins
// only).
func (c *Client) Audit(ctx context.Context, q AuditQuery) ([]api.AuditRecord, error) {
	path := listPath("/v1/audit", map[string]string{"since": q.Since, "user": q.User, "vm": q.VM}, q.Limit)
	var out []api.AuditRecord
	return out, c.do(ctx, "GET", path, nil, &out)
}
