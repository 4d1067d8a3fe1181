package api

import (
	"strconv"
	"strings"
	"time"
)

// Roles a user or token has (see internal/authz for what each may do).
const (
	RoleAdmin    = "admin"
	RoleOperator = "operator"
	RoleViewer   = "viewer"
)

// User is a person or program that calls the API (GET /v1/users).
type User struct {
	Name string `json:"name"`
	Role string `json:"role"`
	// Project, if set, confines the user to that project's VMs.
	Project     string    `json:"project,omitempty"`
	HasPassword bool      `json:"has_password"`
	CreatedAt   time.Time `json:"created_at"`
}

// CreateUserRequest is the body of POST /v1/users.
type CreateUserRequest struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	Project  string `json:"project,omitempty"`
	Password string `json:"password,omitempty"`
}

// PasswordRequest is the body of PUT /v1/users/{name}/password.
type PasswordRequest struct {
	Password string `json:"password"`
}

// Token is an API token as listed (GET /v1/tokens): never its secret,
// except once, in Token, in the answer to its creation.
type Token struct {
	ID        string     `json:"id"`
	Name      string     `json:"name,omitempty"`
	User      string     `json:"user"`
	Role      string     `json:"role"`
	Expires   *time.Time `json:"expires"` // null: never
	CreatedAt time.Time  `json:"created_at"`
	Token     string     `json:"token,omitempty"`
}

// CreateTokenRequest is the body of POST /v1/tokens. Empty User is the
// caller; empty Role is the user's; empty Expires is never.
type CreateTokenRequest struct {
	User    string `json:"user,omitempty"`
	Role    string `json:"role,omitempty"`
	Name    string `json:"name,omitempty"`
	Expires string `json:"expires,omitempty"` // a duration such as 30d, 12h or 90m
}

// ParseDuration parses a positive duration as time.ParseDuration does,
// and also whole days such as "30d".
func ParseDuration(s string) (time.Duration, error) {
	bad := Errorf(ErrInvalid, "%q is not a duration such as 30d, 12h or 90m", s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n <= 0 || n > 100*365 {
			return 0, bad
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, bad
	}
	return d, nil
}
