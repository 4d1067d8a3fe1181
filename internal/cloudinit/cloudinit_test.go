package cloudinit

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var fullSeed = Seed{
	InstanceID: "i-web1",
	Hostname:   "web1",
	MAC:        "52:54:00:AB:CD:0E",
	Address:    "10.57.0.10/24",
	Gateway:    "10.57.0.1",
	DNS:        []string{"10.57.0.1", "192.0.2.53"},
	UserData:   []byte("#!/bin/sh\necho hi\n"),
}

func TestNetworkConfigGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		seed Seed
		want string
	}{
		{"full", fullSeed, `version: 2
ethernets:
  eth0:
    match:
      macaddress: "52:54:00:ab:cd:0e"
    set-name: eth0
    addresses:
      - "10.57.0.10/24"
    gateway4: "10.57.0.1"
    nameservers:
      addresses:
        - "10.57.0.1"
        - "192.0.2.53"
`},
		{"no gateway, no dns", Seed{MAC: "52:54:00:00:00:01", Address: "10.0.0.5/16"}, `version: 2
ethernets:
  eth0:
    match:
      macaddress: "52:54:00:00:00:01"
    set-name: eth0
    addresses:
      - "10.0.0.5/16"
`},
		{"dhcp", Seed{MAC: "52:54:00:00:00:02"}, `version: 2
ethernets:
  eth0:
    match:
      macaddress: "52:54:00:00:00:02"
    set-name: eth0
    dhcp4: true
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(NetworkConfig(tc.seed)); got != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

func TestMetaDataGolden(t *testing.T) {
	for _, tc := range []struct {
		seed Seed
		want string
	}{
		{fullSeed, "instance-id: i-web1\nlocal-hostname: web1\n"},
		{Seed{InstanceID: "vm/1: \"x\""}, "instance-id: \"vm/1: \\\"x\\\"\"\n"},
		{Seed{InstanceID: "yes", Hostname: "a.b-c"}, "instance-id: \"yes\"\nlocal-hostname: a.b-c\n"},
		{Seed{InstanceID: "0123"}, "instance-id: \"0123\"\n"},
	} {
		if got := string(MetaData(tc.seed)); got != tc.want {
			t.Errorf("MetaData(%+v) = %q, want %q", tc.seed, got, tc.want)
		}
	}
}

func TestUserDataDefault(t *testing.T) {
	if got := string(UserData(Seed{})); got != "#cloud-config\n" {
		t.Errorf("default user-data %q", got)
	}
	if got := string(UserData(fullSeed)); got != string(fullSeed.UserData) {
		t.Errorf("user-data %q", got)
	}
}

func TestValidate(t *testing.T) {
	if err := fullSeed.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Seed)
		msg  string
	}{
		{"no instance id", func(s *Seed) { s.InstanceID = "" }, "instance-id"},
		{"control chars", func(s *Seed) { s.InstanceID = "a\nb" }, "control"},
		{"bad hostname", func(s *Seed) { s.Hostname = "web_1" }, "hostname"},
		{"bad mac", func(s *Seed) { s.MAC = "52:54:00" }, "MAC"},
		{"bad address", func(s *Seed) { s.Address = "10.57.0.10" }, "CIDR"},
		{"address without mac", func(s *Seed) { s.MAC = "" }, "MAC"},
		{"bad gateway", func(s *Seed) { s.Gateway = "gw" }, "gateway"},
		{"gateway without address", func(s *Seed) { s.Address = "" }, "gateway"},
		{"bad dns", func(s *Seed) { s.DNS = []string{"8.8.8"} }, "DNS"},
	} {
		s := fullSeed
		tc.mod(&s)
		err := s.Validate()
		if !errors.Is(err, ErrInvalidSeed) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want ErrInvalidSeed mentioning %q", tc.name, err, tc.msg)
		}
	}
}

func TestWriteSeed(t *testing.T) {
	if _, _, err := isoTool(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "seed.iso")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteSeed(ctx, path, fullSeed); err != nil {
		t.Fatal(err)
	}
	iso, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(iso) < 34816 || string(iso[32769:32774]) != "CD001" {
		t.Fatalf("%s has no ISO9660 primary volume descriptor", path)
	}
	if label := strings.TrimRight(string(iso[32808:32840]), " "); label != VolumeLabel {
		t.Errorf("volume label %q, want %q", label, VolumeLabel)
	}
	if left, _ := os.ReadDir(dir); len(left) != 1 {
		t.Errorf("dir holds %v, want only seed.iso", left)
	}
	// Read the files back with isoinfo (shipped with genisoimage) when present.
	if _, err := exec.LookPath("isoinfo"); err == nil {
		for name, want := range map[string][]byte{
			MetaDataFile:      MetaData(fullSeed),
			UserDataFile:      fullSeed.UserData,
			NetworkConfigFile: NetworkConfig(fullSeed),
		} {
			out, err := exec.Command("isoinfo", "-R", "-i", path, "-x", "/"+name).Output()
			if err != nil {
				t.Fatalf("isoinfo -x %s: %v", name, err)
			}
			if string(out) != string(want) {
				t.Errorf("%s in the ISO = %q, want %q", name, out, want)
			}
		}
	}

	bad := fullSeed
	bad.MAC = "nope"
	if err := WriteSeed(ctx, path, bad); !errors.Is(err, ErrInvalidSeed) {
		t.Errorf("invalid seed: %v", err)
	}
	if err := WriteSeed(ctx, filepath.Join(dir, "missing", "seed.iso"), fullSeed); err == nil {
		t.Error("seed in a missing directory succeeded")
	}
}
