package authz

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/shoalvm/shoal/internal/api"
)

// PasswordIterations is the PBKDF2-HMAC-SHA256 work factor of new
// password hashes (OWASP's 2023 advice); a hash records its own, so it
// can be raised later.
const PasswordIterations = 600_000

// Password length bounds.
const (
	MinPassword = 8
	MaxPassword = 1024
)

const hashScheme = "pbkdf2-sha256"

// HashPassword returns the stored form of a password:
// pbkdf2-sha256$ITERATIONS$SALT$KEY (base64, no padding).
func HashPassword(pw string) (string, error) {
	if len(pw) < MinPassword || len(pw) > MaxPassword {
		return "", api.Errorf(api.ErrInvalid, "a password has %d to %d characters", MinPassword, MaxPassword)
	}
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	return hashWith(pw, salt, PasswordIterations)
}

func hashWith(pw string, salt []byte, iter int) (string, error) {
	k, err := pbkdf2.Key(sha256.New, pw, salt, iter, 32)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	enc := base64.RawStdEncoding
	return fmt.Sprintf("%s$%d$%s$%s", hashScheme, iter, enc.EncodeToString(salt), enc.EncodeToString(k)), nil
}

// CheckPassword reports whether pw matches a stored hash.
func CheckPassword(stored, pw string) bool {
	f := strings.Split(stored, "$")
	if len(f) != 4 || f[0] != hashScheme {
		return false
	}
	iter, err := strconv.Atoi(f[1])
	salt, serr := base64.RawStdEncoding.DecodeString(f[2])
	if err != nil || serr != nil || iter < 1 || iter > 10*PasswordIterations {
		return false
	}
	got, err := hashWith(pw, salt, iter)
	return err == nil && subtle.ConstantTimeCompare([]byte(got), []byte(stored)) == 1
}

// NewToken returns a new API token's secret: shoal_ and 48 random hex
// digits (192 bits).
func NewToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return "shoal_" + hex.EncodeToString(b)
}
