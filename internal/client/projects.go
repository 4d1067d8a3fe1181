package client

import (
	"context"

	"github.com/shoalvm/shoal/internal/api"
)

// ListProjects returns the projects the caller may see, with their usage.
func (c *Client) ListProjects(ctx context.Context) ([]api.Project, error) {
	var out []api.Project
	return out, c.do(ctx, "GET", "/v1/projects", nil, &out)
}

// CreateProject makes a project (admins only).
func (c *Client) CreateProject(ctx context.Context, req api.CreateProjectRequest) (api.Project, error) {
	var out api.Project
	return out, c.do(ctx, "POST", "/v1/projects", req, &out)
}

// GetProject returns one project with its limits and usage.
func (c *Client) GetProject(ctx context.Context, name string) (api.Project, error) {
	var out api.Project
	return out, c.do(ctx, "GET", "/v1/projects/"+esc(name), nil, &out)
}

// DeleteProject deletes a project that has no VMs (admins only).
func (c *Client) DeleteProject(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/projects/"+esc(name), nil, nil)
}
