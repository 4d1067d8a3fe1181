package cephtest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"time"
)

// newKey makes a cephx secret as ceph-authtool --gen-key does: a CryptoKey
// (type 1 = AES, creation time, 16 random bytes) in base64. Made here, so
// that no key is passed on a command line and no process is spent on it.
func newKey() (string, error) {
	b := make([]byte, 2+8+2+16)
	binary.LittleEndian.PutUint16(b[0:], 1)
	now := time.Now()
	binary.LittleEndian.PutUint32(b[2:], uint32(now.Unix()))
	binary.LittleEndian.PutUint32(b[6:], uint32(now.Nanosecond()))
	binary.LittleEndian.PutUint16(b[10:], 16)
	if _, err := rand.Read(b[12:]); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// entity is one key of a keyring, with its capabilities.
type entity struct {
	name string      // e.g. client.admin
	key  string      // base64
	caps [][2]string // subsystem, capability
}

// keyring renders entities in Ceph's keyring format.
func keyring(es ...entity) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "[%s]\n\tkey = %s\n", e.name, e.key)
		for _, c := range e.caps {
			fmt.Fprintf(&b, "\tcaps %s = %q\n", c[0], c[1])
		}
	}
	return b.String()
}

// writeSecret writes a file only its owner can read.
func writeSecret(path, data string) error {
	return os.WriteFile(path, []byte(data), 0o600)
}
