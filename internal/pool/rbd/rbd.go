// Package rbd is the driver of a Ceph RBD pool: each volume is an RBD
// image named vol-<id>, made, grown and removed with Ceph's rbd and ceph
// commands (Debian's ceph-common), filled from a qcow2 base by qemu-img
// through QEMU's rbd driver (qemu-block-extra), and opened by a host's
// QEMU from the description QEMU returns. Fencing puts a host's address on
// the cluster's OSD blocklist, so that none of its Ceph clients can write
// any more, whatever its own watchdog does.
//
// Keys never appear on a command line or in a log: every command is given
// a keyring file (0600) through a ceph.conf the driver writes in its
// directory, and QEMU a file holding the key alone.
package rbd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool"
)

// Config is what the driver needs of a pool.
type Config struct {
	Monitors []string // the monitors' HOST:PORT (3300 = msgr2, 6789 = msgr1)
	Pool     string   // the RBD pool
	User     string   // the Ceph user without "client.", e.g. "shoal"
	Keyring  string   // a keyring file holding the user's key
	// FenceUser and FenceKeyring are a user allowed to change the OSD
	// blocklist (e.g. the admin); "" = User and Keyring.
	FenceUser, FenceKeyring string
	// Hosts maps a Shoal host's name to the IP address its Ceph
	// clients (its QEMUs) reach the cluster from; Fence needs it.
	Hosts map[string]string
	// Dir is the driver's own directory (0700): its ceph.conf and the
	// user's key file for QEMU.
	Dir string
	// Prefix, if given, runs every command through another one, e.g.
	// "ip", "netns", "exec", NS in tests.
	Prefix []string
	Log    *slog.Logger
}

// Driver manages the volumes of one RBD pool; it implements pool.Driver
// and pool.Fencer.
type Driver struct {
	cfg       Config
	conf      string              // ceph.conf of User
	fenceConf string              // ceph.conf of FenceUser
	keyFile   string              // the user's key alone, for QEMU's secret object
	ran       func(argv []string) // if set, sees every command line (tests)
}

var (
	_ pool.Driver = (*Driver)(nil)
	_ pool.Fencer = (*Driver)(nil)
)

// blocklistSeconds is how long a fence lasts if nobody lifts it: ten
// years, i.e. until Unfence.
const blocklistSeconds = "315360000"

// New checks cfg and writes the driver's files in cfg.Dir.
func New(cfg Config) (*Driver, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Monitors) == 0 || cfg.Pool == "" || cfg.User == "" || cfg.Keyring == "" || cfg.Dir == "" {
		return nil, api.Errorf(api.ErrInvalid, "rbd pool: monitors, pool, user, keyring and a directory are all needed")
	}
	for _, m := range cfg.Monitors {
		if _, _, err := net.SplitHostPort(m); err != nil {
			return nil, api.Errorf(api.ErrInvalid, "rbd pool: monitor %q is not HOST:PORT", m)
		}
	}
	for h, a := range cfg.Hosts {
		if net.ParseIP(a) == nil {
			return nil, api.Errorf(api.ErrInvalid, "rbd pool: host %s: %q is not an IP address", h, a)
		}
	}
	if cfg.FenceUser == "" {
		cfg.FenceUser, cfg.FenceKeyring = cfg.User, cfg.Keyring
	}
	key, err := keyOf(cfg.Keyring, "client."+cfg.User)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	d := &Driver{cfg: cfg, conf: filepath.Join(cfg.Dir, "ceph.conf"),
		fenceConf: filepath.Join(cfg.Dir, "fence.conf"), keyFile: filepath.Join(cfg.Dir, cfg.User+".key")}
	files := map[string]string{
		d.conf:      cephConf(cfg.Monitors, cfg.Keyring),
		d.fenceConf: cephConf(cfg.Monitors, cfg.FenceKeyring),
		d.keyFile:   key,
	}
	for path, data := range files {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// cephConf is a client's ceph.conf.
func cephConf(monitors []string, keyring string) string {
	return fmt.Sprintf("[global]\nmon host = %s\nkeyring = %s\nclient mount timeout = 30\n", strings.Join(monitors, ","), keyring)
}

// keyOf reads the key of entity from a keyring file.
func keyOf(keyring, entity string) (string, error) {
	b, err := os.ReadFile(keyring)
	if err != nil {
		return "", api.Errorf(api.ErrInvalid, "rbd pool: keyring: %v", err)
	}
	section := ""
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]") {
			section = l[1 : len(l)-1]
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok && section == entity && strings.TrimSpace(k) == "key" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", api.Errorf(api.ErrInvalid, "rbd pool: keyring %s holds no key of %s", keyring, entity)
}

// QEMUVolume is how a QEMU opens a volume with its rbd driver.
type QEMUVolume struct {
	Monitors []string // HOST:PORT
	Pool     string
	Image    string // vol-<id>
	User     string // without "client."
	// KeyFile holds the user's key alone, in base64 (0600): QEMU reads
	// it as a secret object in that format (-object
	// secret,id=S,file=KeyFile,format=base64) named by key-secret=S.
	KeyFile string
}

// QEMU describes the volume of id for a QEMU.
func (d *Driver) QEMU(id string) QEMUVolume {
	return QEMUVolume{Monitors: d.cfg.Monitors, Pool: d.cfg.Pool, Image: Image(id), User: d.cfg.User, KeyFile: d.keyFile}
}

// Image is the RBD image of the volume id.
func Image(id string) string { return "vol-" + id }

// newSuffix marks an image being filled from a base; it is renamed to
// its volume's name when complete.
const newSuffix = ".new"

var idRE = regexp.MustCompile(`^[0-9a-f]+$`)

func checkID(id string) error {
	if !idRE.MatchString(id) {
		return api.Errorf(api.ErrInvalid, "volume id %q is not hexadecimal", id)
	}
	return nil
}

// errAbsent is what a command says of an image that does not exist.
var errAbsent = errors.New("absent")

// run runs an rbd, ceph or qemu-img command; its standard error goes in
// the error (it never holds a key).
func (d *Driver) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	argv := append(append(append([]string{}, d.cfg.Prefix...), name), args...)
	if d.ran != nil {
		d.ran(argv)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 2 && strings.Contains(msg, "No such file or directory") {
			return nil, fmt.Errorf("%w: %s", errAbsent, msg)
		}
		return nil, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// rbd runs the rbd command as the pool's user.
func (d *Driver) rbd(ctx context.Context, args ...string) ([]byte, error) {
	return d.run(ctx, "rbd", append([]string{"-c", d.conf, "--id", d.cfg.User}, args...)...)
}

// spec is pool/image.
func (d *Driver) spec(image string) string { return d.cfg.Pool + "/" + image }

// size is the size of an image; errAbsent if there is none.
func (d *Driver) size(ctx context.Context, image string) (int64, error) {
	out, err := d.rbd(ctx, "info", "--format", "json", d.spec(image))
	if err != nil {
		return 0, err
	}
	var info struct {
		Size int64 `json:"size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("rbd info %s: %w", image, err)
	}
	return info.Size, nil
}

// WriteKeyring writes a keyring file (0600) holding user's key, as a
// pool's definition gives them.
func WriteKeyring(path, user, key string) error {
	return os.WriteFile(path, []byte(fmt.Sprintf("[client.%s]\n\tkey = %s\n", user, key)), 0o600)
}
