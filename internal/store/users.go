package store

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// User is a user's record at users/NAME.
type User struct {
	api.User
	PasswordHash string `json:"password_hash,omitempty"`
	// Gen tells this user from an earlier one of the same name (the
	// etcd revision the record was created at; filled in on reading).
	// A token made for an earlier user of the name is no token of this one.
	Gen int64 `json:"-"`
	Rev int64 `json:"-"` // the revision it was last written at (filled in on reading)
}

var usersPrefix = key("users") + "/"

func userKey(name string) string { return usersPrefix + name }

func userWhat(name string) string { return fmt.Sprintf("user %q", name) }

// View returns what the API shows of the user.
func (u User) View() api.User {
	v := u.User
	v.HasPassword = u.PasswordHash != ""
	return v
}

// CreateUser records a new user; api.ErrConflict if the name is taken.
func (s *Store) CreateUser(ctx context.Context, u User) error {
	return create(ctx, s.c, userKey(u.Name), userWhat(u.Name), u)
}

// GetUser reads a user (api.ErrNotFound if there is none).
func (s *Store) GetUser(ctx context.Context, name string) (User, error) {
	var u User
	resp, err := s.c.Get(ctx, userKey(name))
	if err != nil {
		return u, fmt.Errorf("read %s: %w: %w", userWhat(name), api.ErrUnavailable, err)
	}
	if len(resp.Kvs) == 0 {
		return u, api.Errorf(api.ErrNotFound, "%s not found: see 'shoal user list'", userWhat(name))
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &u); err != nil {
		return u, fmt.Errorf("decode %s: %w", userWhat(name), err)
	}
	u.Gen, u.Rev = resp.Kvs[0].CreateRevision, resp.Kvs[0].ModRevision
	return u, nil
}

// ListUsers returns every user, by name.
func (s *Store) ListUsers(ctx context.Context) ([]User, error) {
	u, _, err := list[User](ctx, s.c, usersPrefix)
	return u, err
}

// HasUsers reports whether any user is recorded (none before the first
// 'shoal up' of a version with users).
func (s *Store) HasUsers(ctx context.Context) (bool, error) {
	resp, err := s.c.Get(ctx, usersPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("count users: %w: %w", api.ErrUnavailable, err)
	}
	return resp.Count > 0, nil
}

// SetPassword replaces a user's password hash.
func (s *Store) SetPassword(ctx context.Context, name, hash string) error {
	_, err := update(ctx, s.c, userKey(name), userWhat(name), func(u *User) error {
		u.PasswordHash = hash
		return nil
	})
	return err
}

// DeleteUser deletes a user and its tokens in one transaction. It
// refuses to delete the last admin, which would lock everyone out.
func (s *Store) DeleteUser(ctx context.Context, name string) error {
	users, err := s.ListUsers(ctx)
	if err != nil {
		return err
	}
	var target *User
	admins := 0
	for i, u := range users {
		if u.Name == name {
			target = &users[i]
		}
		if u.Role == api.RoleAdmin {
			admins++
		}
	}
	if target == nil {
		return api.Errorf(api.ErrNotFound, "%s not found: see 'shoal user list'", userWhat(name))
	}
	if target.Role == api.RoleAdmin && admins == 1 {
		return api.Errorf(api.ErrConflict, "%s is the last admin: make another admin first", userWhat(name))
	}
	tokens, err := s.ListTokens(ctx)
	if err != nil {
		return err
	}
	// The user's tokens go with it: the first ones in the transaction
	// (etcd takes at most 128 operations in one), the rest right after.
	// Those left by a failure after the transaction are refused anyway:
	// their user is gone, and a new user of the name is another one (its
	// Gen differs) but for tokens from before users, which are few.
	ops := []clientv3.Op{clientv3.OpDelete(userKey(name))}
	var later []clientv3.Op
	for _, t := range tokens {
		switch {
		case t.Owner() != name:
		case len(ops) < 100:
			ops = append(ops, clientv3.OpDelete(tokenKey(t.hash)))
		default:
			later = append(later, clientv3.OpDelete(tokenKey(t.hash)))
		}
	}
	// Every admin counted must still be there, so that two admins
	// deleting each other cannot leave none.
	conds := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(userKey(name)), "=", target.Rev)}
	for _, u := range users {
		if u.Role == api.RoleAdmin && u.Name != name {
			conds = append(conds, clientv3.Compare(clientv3.ModRevision(userKey(u.Name)), "=", u.Rev))
		}
	}
	resp, err := s.c.Txn(ctx).If(conds...).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("delete %s: %w: %w", userWhat(name), api.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		return api.Errorf(api.ErrConflict, "users changed meanwhile, try again")
	}
	for _, op := range later {
		if _, err := s.c.Do(ctx, op); err != nil {
			return fmt.Errorf("delete the tokens of %s: %w: %w", userWhat(name), api.ErrUnavailable, err)
		}
	}
	return nil
}

// SetRev records the revision a user was read at (see setRev).
func (u *User) SetRev(rev int64) { u.Rev = rev }
