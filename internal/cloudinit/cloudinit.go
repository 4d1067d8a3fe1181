// Package cloudinit writes cloud-init NoCloud seeds: a small ISO9660 volume
// labelled "cidata" holding meta-data, user-data and network-config (netplan
// v2). Real cloud images and the shoal tiny guest both read them at boot.
package cloudinit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/shoalvm/shoal/internal/atomicfile"
)

// VolumeLabel is the volume ID cloud-init's NoCloud source looks for.
const VolumeLabel = "cidata"

// Standard NoCloud file names.
const (
	MetaDataFile      = "meta-data"
	UserDataFile      = "user-data"
	NetworkConfigFile = "network-config"
)

// DefaultUserData is used when Seed.UserData is nil.
const DefaultUserData = "#cloud-config\n"

// ErrInvalidSeed is wrapped by Validate and WriteSeed for bad seed fields.
var ErrInvalidSeed = errors.New("invalid cloud-init seed")

// Seed is the per-VM data of a NoCloud seed.
type Seed struct {
	InstanceID string
	Hostname   string
	MAC        string   // "52:54:00:xx:xx:xx"
	Address    string   // CIDR, e.g. "10.57.0.10/24"
	Gateway    string   // may be empty
	DNS        []string // may be empty
	UserData   []byte   // may be nil; default "#cloud-config\n"
}

var hostnameRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

// Validate checks the seed fields and says which one is wrong.
func (s Seed) Validate() error {
	if s.InstanceID == "" {
		return fmt.Errorf("instance-id is empty: %w", ErrInvalidSeed)
	}
	for _, r := range s.InstanceID {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("instance-id %q has control characters: %w", s.InstanceID, ErrInvalidSeed)
		}
	}
	if s.Hostname != "" && (len(s.Hostname) > 253 || !hostnameRe.MatchString(s.Hostname)) {
		return fmt.Errorf("hostname %q is not a valid DNS name (letters, digits, '-', '.'): %w", s.Hostname, ErrInvalidSeed)
	}
	if s.MAC != "" {
		hw, err := net.ParseMAC(s.MAC)
		if err != nil || len(hw) != 6 {
			return fmt.Errorf("MAC %q is not of the form 52:54:00:12:34:56: %w", s.MAC, ErrInvalidSeed)
		}
	}
	if s.Address != "" {
		if _, err := netip.ParsePrefix(s.Address); err != nil {
			return fmt.Errorf("address %q is not CIDR like 10.57.0.10/24: %w", s.Address, ErrInvalidSeed)
		}
		if s.MAC == "" {
			return fmt.Errorf("a static address needs the NIC's MAC: %w", ErrInvalidSeed)
		}
	}
	if s.Gateway != "" {
		gw, err := netip.ParseAddr(s.Gateway)
		if err != nil || !gw.Is4() {
			return fmt.Errorf("gateway %q is not an IPv4 address: %w", s.Gateway, ErrInvalidSeed)
		}
		if s.Address == "" {
			return fmt.Errorf("a gateway needs a static address: %w", ErrInvalidSeed)
		}
	}
	for _, d := range s.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			return fmt.Errorf("DNS server %q is not an IP address: %w", d, ErrInvalidSeed)
		}
	}
	return nil
}

// yamlString renders s as a YAML scalar, double-quoted unless it is plainly
// safe. Go's quoting escapes (\n, \t, \xNN, \uNNNN, ...) are valid in YAML
// double-quoted scalars.
func yamlString(s string) string {
	if plainSafe(s) {
		return s
	}
	return strconv.Quote(s)
}

var plainRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)

// plainSafe reports whether s reads back as the same string when unquoted.
func plainSafe(s string) bool {
	if !plainRe.MatchString(s) {
		return false
	}
	switch strings.ToLower(s) {
	case "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf":
		return false
	}
	return true
}

// normMAC lower-cases a MAC address; invalid input is returned unchanged.
func normMAC(m string) string {
	if hw, err := net.ParseMAC(m); err == nil {
		return hw.String()
	}
	return m
}

// NetworkConfig renders the network-config file: netplan v2 YAML matching
// the NIC by MAC, renaming it eth0, with static addresses, gateway4 and
// nameservers. Without an address the NIC uses DHCP. Values are always
// quoted where YAML could misread them (a MAC is a sexagesimal number in
// YAML 1.1).
func NetworkConfig(s Seed) []byte {
	var b bytes.Buffer
	b.WriteString("version: 2\n")
	b.WriteString("ethernets:\n")
	b.WriteString("  eth0:\n")
	if s.MAC != "" {
		b.WriteString("    match:\n")
		fmt.Fprintf(&b, "      macaddress: %s\n", strconv.Quote(normMAC(s.MAC)))
		b.WriteString("    set-name: eth0\n")
	}
	if s.Address == "" {
		b.WriteString("    dhcp4: true\n")
	} else {
		b.WriteString("    addresses:\n")
		fmt.Fprintf(&b, "      - %s\n", strconv.Quote(s.Address))
		if s.Gateway != "" {
			fmt.Fprintf(&b, "    gateway4: %s\n", strconv.Quote(s.Gateway))
		}
	}
	if len(s.DNS) > 0 {
		b.WriteString("    nameservers:\n")
		b.WriteString("      addresses:\n")
		for _, d := range s.DNS {
			fmt.Fprintf(&b, "        - %s\n", strconv.Quote(d))
		}
	}
	return b.Bytes()
}

// MetaData renders the meta-data file (instance-id, local-hostname).
func MetaData(s Seed) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "instance-id: %s\n", yamlString(s.InstanceID))
	if s.Hostname != "" {
		fmt.Fprintf(&b, "local-hostname: %s\n", yamlString(s.Hostname))
	}
	return b.Bytes()
}

// UserData returns the user-data file contents.
func UserData(s Seed) []byte {
	if s.UserData == nil {
		return []byte(DefaultUserData)
	}
	return s.UserData
}

// isoTool finds an ISO9660 writer that takes genisoimage's arguments.
func isoTool() (string, []string, error) {
	for _, name := range []string{"genisoimage", "mkisofs"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil, nil
		}
	}
	if p, err := exec.LookPath("xorriso"); err == nil {
		return p, []string{"-as", "mkisofs"}, nil
	}
	return "", nil, fmt.Errorf("no ISO9660 writer found (apt-get install genisoimage): %w", exec.ErrNotFound)
}

// WriteSeed writes the seed as an ISO9660 volume labelled "cidata" at path,
// atomically: a temporary file in the same directory renamed over path.
func WriteSeed(ctx context.Context, path string, s Seed) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("cloudinit: %w", err)
	}
	tool, pre, err := isoTool()
	if err != nil {
		return fmt.Errorf("cloudinit: %w", err)
	}
	// Staged in a private dir of root's, not beside the seed: the VM's
	// dir belongs to its QEMU user, who could swap a staging dir there
	// for a link, and have root write the files elsewhere.
	stage, err := os.MkdirTemp("", ".shoal-seed-")
	if err != nil {
		return fmt.Errorf("cloudinit: %w", err)
	}
	defer os.RemoveAll(stage)
	files := map[string][]byte{
		MetaDataFile:      MetaData(s),
		UserDataFile:      UserData(s),
		NetworkConfigFile: NetworkConfig(s),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(stage, name), data, 0o644); err != nil {
			return fmt.Errorf("cloudinit: %w", err)
		}
	}
	tmp := filepath.Join(stage, "seed.iso")
	args := append(pre, "-quiet", "-output", tmp, "-volid", VolumeLabel,
		"-joliet", "-rock", "-input-charset", "utf-8",
		filepath.Join(stage, MetaDataFile),
		filepath.Join(stage, UserDataFile),
		filepath.Join(stage, NetworkConfigFile))
	cmd := exec.CommandContext(ctx, tool, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cloudinit: %s: %s: %w", filepath.Base(tool), strings.TrimSpace(out.String()), err)
	}
	iso, err := os.ReadFile(tmp)
	if err != nil {
		return fmt.Errorf("cloudinit: %w", err)
	}
	// Into the seed's dir through a new file of root's (O_EXCL), then
	// renamed over the seed: no link there is followed.
	if err := atomicfile.Write(path, iso, 0o644); err != nil {
		return fmt.Errorf("cloudinit: install seed: %w", err)
	}
	return nil
}
