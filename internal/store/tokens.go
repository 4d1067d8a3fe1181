package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// TokenInfo describes an API token; only its hash is stored, at
// tokens/HASH. Tokens made before users existed have no User: they are
// the tokens of user "admin" (see LegacyTokenUser).
type TokenInfo struct {
	ID        string    `json:"-"` // TokenID of the secret, filled in on reading
	hash      string    // the secret's hash (its key), filled in by ListTokens
	Name      string    `json:"name"`
	User      string    `json:"user,omitempty"`
	UserGen   int64     `json:"user_gen,omitempty"` // the User.Gen of the user it was made for
	Role      string    `json:"role"`
	Expires   time.Time `json:"expires,omitzero"` // zero: never
	CreatedAt time.Time `json:"created_at"`
}

// LegacyTokenUser is the user of a token recorded without one.
const LegacyTokenUser = "admin"

// Owner returns the user the token belongs to.
func (t TokenInfo) Owner() string {
	if t.User == "" {
		return LegacyTokenUser
	}
	return t.User
}

// tokenIDLen is how many hex digits of a token's hash make its id: the id
// is a prefix of its key, so that revoking by id is one range read.
const tokenIDLen = 12

var tokensPrefix = key("tokens") + "/"

func tokenKey(hash string) string { return tokensPrefix + hash }

// HashToken returns the stored form of a token.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// TokenID returns the public id of a token (which reveals nothing of it).
func TokenID(token string) string { return HashToken(token)[:tokenIDLen] }

// PutToken stores a token's hash.
func (s *Store) PutToken(ctx context.Context, token string, info TokenInfo) error {
	return put(ctx, s.c, tokenKey(HashToken(token)), info)
}

// CreateToken stores a new token of an existing user: it fails with
// api.ErrNotFound if the user is gone, so that a token is never made for
// a user being deleted.
func (s *Store) CreateToken(ctx context.Context, token string, info TokenInfo) error {
	b, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("encode token: %w", err)
	}
	tk := tokenKey(HashToken(token))
	resp, err := s.c.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(userKey(info.User)), ">", 0),
		clientv3.Compare(clientv3.CreateRevision(tk), "=", 0),
	).Then(clientv3.OpPut(tk, string(b))).Commit()
	if err != nil {
		return fmt.Errorf("create token: %w: %w", api.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		return api.Errorf(api.ErrNotFound, "user %q not found", info.User)
	}
	return nil
}

// CheckToken returns the token's info, or api.ErrUnauthorized if there
// is no such token (never made, or revoked). Expiry is the caller's to
// check.
func (s *Store) CheckToken(ctx context.Context, token string) (TokenInfo, error) {
	if token == "" {
		return TokenInfo{}, api.Errorf(api.ErrUnauthorized, "missing API token: pass --token or set SHOAL_TOKEN")
	}
	h := HashToken(token)
	info, _, err := get[TokenInfo](ctx, s.c, tokenKey(h), "token")
	if err != nil {
		if api.IsNotFound(err) {
			return info, api.Errorf(api.ErrUnauthorized, "invalid API token: it is wrong or was revoked")
		}
		return info, err
	}
	info.ID = h[:tokenIDLen]
	return info, nil
}

// ListTokens returns every token (never their secrets).
func (s *Store) ListTokens(ctx context.Context) ([]TokenInfo, error) {
	resp, err := s.c.Get(ctx, tokensPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w: %w", api.ErrUnavailable, err)
	}
	out := make([]TokenInfo, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var t TokenInfo
		if json.Unmarshal(kv.Value, &t) != nil {
			continue
		}
		t.hash = string(kv.Key[len(tokensPrefix):])
		t.ID = t.hash[:min(len(t.hash), tokenIDLen)]
		out = append(out, t)
	}
	return out, nil
}

// RevokeToken deletes the token with this id once check, given the
// token, allows it (e.g. it is the caller's own), and returns the token.
func (s *Store) RevokeToken(ctx context.Context, id string, check func(TokenInfo) error) (TokenInfo, error) {
	var t TokenInfo
	notFound := api.Errorf(api.ErrNotFound, "token %q not found: see 'shoal token list'", id)
	if len(id) != tokenIDLen {
		return t, notFound
	}
	resp, err := s.c.Get(ctx, tokenKey(id), clientv3.WithPrefix(), clientv3.WithLimit(2))
	if err != nil {
		return t, fmt.Errorf("read token: %w: %w", api.ErrUnavailable, err)
	}
	switch {
	case len(resp.Kvs) == 0:
		return t, notFound
	case len(resp.Kvs) > 1:
		return t, api.Errorf(api.ErrConflict, "token id %q is ambiguous: revoke the tokens of its user instead", id)
	}
	kv := resp.Kvs[0]
	if err := json.Unmarshal(kv.Value, &t); err != nil {
		return t, fmt.Errorf("decode token %s: %w", id, err)
	}
	t.ID = id
	if err := check(t); err != nil {
		return t, err
	}
	txn, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
		Then(clientv3.OpDelete(string(kv.Key))).Commit()
	if err != nil {
		return t, fmt.Errorf("revoke token: %w: %w", api.ErrUnavailable, err)
	}
	if !txn.Succeeded {
		return t, api.Errorf(api.ErrConflict, "token %q changed meanwhile, try again", id)
	}
	return t, nil
}
