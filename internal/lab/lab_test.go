package lab

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestAddrPlan(t *testing.T) {
	for _, c := range []struct{ member, addr, cidr string }{
		{"ctl", "10.57.0.1", "10.57.0.1/24"},
		{"host1", "10.57.0.2", "10.57.0.2/24"},
		{"host2", "10.57.0.3", "10.57.0.3/24"},
		{"host8", "10.57.0.9", "10.57.0.9/24"},
		{"client", "10.57.0.254", "10.57.0.254/24"},
		{"ctl2", "10.57.0.252", "10.57.0.252/24"},
		{"ctl3", "10.57.0.253", "10.57.0.253/24"},
		{"storage", "10.57.0.251", "10.57.0.251/24"},
	} {
		a, err := Addr(c.member)
		if err != nil || a.String() != c.addr {
			t.Errorf("Addr(%q) = %v, %v; want %s", c.member, a, err, c.addr)
		}
		if got := cidr(c.member); got != c.cidr {
			t.Errorf("cidr(%q) = %s; want %s", c.member, got, c.cidr)
		}
	}
	for _, bad := range []string{"host0", "host9", "host10", "host01", "host", "hostx", "host-1", "Host1", "", "switch", "ctl1", "ctl4", "ctl02", "server2"} {
		if a, err := Addr(bad); err == nil {
			t.Errorf("Addr(%q) = %v; want an error", bad, a)
		}
	}
	// Hosts stay below the VMs' range (.10 and up).
	last, _ := Addr(HostName(MaxHosts))
	if last.As4()[3] >= 10 {
		t.Errorf("host%d gets %v, inside the VMs' range", MaxHosts, last)
	}
	// Server replicas and the storage server sit above the VMs' range
	// (up to .250), below the client.
	for _, m := range []string{ServerNS(2), ServerNS(3), StorageNS} {
		a := mustAddr(m).As4()[3]
		if a <= 250 || a >= 254 {
			t.Errorf("%s gets .%d, inside the VMs' range or the client's address", m, a)
		}
	}
}

func TestServerIndex(t *testing.T) {
	for name, want := range map[string]int{"server": 1, "ctl": 1, "server1": 1, "server2": 2, "ctl2": 2, "server3": 3, "ctl3": 3,
		"server4": 0, "ctl4": 0, "server0": 0, "server02": 0, "ctl1": 0, "host1": 0, "client": 0} {
		k, ok := ServerIndex(name)
		if ok != (want != 0) || k != want {
			t.Errorf("ServerIndex(%q) = %d, %v; want %d", name, k, ok, want)
		}
	}
	s := &State{Hosts: 2, Servers: 3}
	if got := s.Members(); !reflect.DeepEqual(got, []string{"ctl", "ctl2", "ctl3", "client", "storage", "host1", "host2"}) {
		t.Errorf("members of a lab of 3 servers: %v", got)
	}
	for member, want := range map[string]string{"server": "server", "ctl": "server", "server1": "server", "server2": "server2", "ctl3": "server3", "host2": "agent-host2"} {
		if got, err := procFor(s, member); err != nil || got != want {
			t.Errorf("procFor(%q) = %q, %v; want %q", member, got, err, want)
		}
	}
	if _, err := procFor(s, "storage"); err == nil {
		t.Error("a lab without a storage server process has one")
	}
	s.setProc(Proc{Name: storageProc, NS: StorageNS})
	if got, err := procFor(s, "storage"); err != nil || got != "storage-server" {
		t.Errorf("procFor(storage) = %q, %v", got, err)
	}
	if _, err := procFor(&State{Hosts: 2}, "server2"); err == nil {
		t.Error("a lab of one server has a server2")
	}
}

func TestHostIndex(t *testing.T) {
	for name, want := range map[string]int{"host1": 1, "host8": 8, "host9": 0, "host0": 0, "host01": 0, "ctl": 0, "client": 0, "host1x": 0} {
		k, ok := HostIndex(name)
		if ok != (want != 0) || k != want {
			t.Errorf("HostIndex(%q) = %d, %v; want %d", name, k, ok, want)
		}
	}
}

func TestShoalCommandLines(t *testing.T) {
	s := Shoal{Binary: "/usr/bin/shoal"}
	l := Layout{Dir: "/var/lib/shoal-lab"}
	for _, c := range []struct {
		name string
		got  []string
		want string
	}{
		{"server", s.ServerArgv(l),
			"/usr/bin/shoal server --data-dir /var/lib/shoal-lab/ctl --listen 10.57.0.1:7443 --advertise https://10.57.0.1:7443 --config /var/lib/shoal-lab/config.json -v"},
		{"agent1", s.AgentArgv(l, 1, "TOK"),
			"/usr/bin/shoal agent --join https://10.57.0.1:7443 --token TOK --host host1 --data-dir /var/lib/shoal-lab/host1 --listen 10.57.0.2:7444 --network-addr 10.57.0.2/24 --uplink eth0 --shared-pool shared=/var/lib/shoal-lab/shared --accel tcg -v"},
		{"agent3 kvm", Shoal{Binary: "/b/shoal", Accel: "kvm"}.AgentArgv(Layout{Dir: "/l"}, 3, "T"),
			"/b/shoal agent --join https://10.57.0.1:7443 --token T --host host3 --data-dir /l/host3 --listen 10.57.0.4:7444 --network-addr 10.57.0.4/24 --uplink eth0 --shared-pool shared=/l/shared --accel kvm -v"},
		{"server1 of 3", s.ReplicaArgv(l, 1, ""),
			"/usr/bin/shoal server --data-dir /var/lib/shoal-lab/ctl --listen 10.57.0.1:7443 --advertise https://10.57.0.1:7443 --config /var/lib/shoal-lab/config.json --name server1 --etcd-peer-url https://10.57.0.1:7380 -v"},
		{"server2 of 3", s.ReplicaArgv(l, 2, "TOK"),
			"/usr/bin/shoal server --data-dir /var/lib/shoal-lab/ctl2 --listen 10.57.0.252:7443 --advertise https://10.57.0.252:7443 --config /var/lib/shoal-lab/ctl2/config.json --name server2 --etcd-peer-url https://10.57.0.252:7380 --join https://10.57.0.1:7443 --token TOK -v"},
		{"servers via server3", s.serversArgv(l, 3), "/usr/bin/shoal --server unix:///var/lib/shoal-lab/ctl3/shoal.sock cluster servers -o json"},
		{"token", s.tokenArgv(), "/usr/bin/shoal cluster token"},
		{"server token", s.serverTokenArgv(), "/usr/bin/shoal cluster token --server"},
		{"host list", s.hostListArgv(), "/usr/bin/shoal host list -o json"},
		{"storage", s.StorageArgv(l, "TOK"),
			"/usr/bin/shoal storage-server --join https://10.57.0.1:7443 --token TOK --name storage --data-dir /var/lib/shoal-lab/storage --dir /var/lib/shoal-lab/san --listen 10.57.0.251:3260 -v"},
	} {
		if got := strings.Join(c.got, " "); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
	if got, want := l.SocketURL(), "unix:///var/lib/shoal-lab/ctl/shoal.sock"; got != want {
		t.Errorf("SocketURL = %s; want %s", got, want)
	}
}

func TestLabEnv(t *testing.T) {
	t.Setenv("SHOAL_SERVER", "https://elsewhere")
	t.Setenv("SHOAL_TOKEN", "x")
	t.Setenv("SHOAL_CONFIG", "/home/me/c.json")
	env := strings.Join(labEnv(Layout{Dir: "/l"}), "\n")
	if strings.Contains(env, "elsewhere") || strings.Contains(env, "SHOAL_TOKEN") || strings.Contains(env, "/home/me/c.json") {
		t.Errorf("labEnv keeps the caller's Shoal settings:\n%s", env)
	}
	if !strings.Contains(env, "SHOAL_CONFIG=/l/config.json") {
		t.Errorf("labEnv does not point at the lab's settings:\n%s", env)
	}
}

func TestPoolServed(t *testing.T) {
	for _, c := range []struct{ list, err string }{
		{`[{"name":"san","type":"iscsi","size":1000,"hosts":["storage"]}]`, ""},
		{`[{"name":"shared","size":1000,"hosts":["host1"]},{"name":"san","size":1000,"hosts":["host1","storage"]}]`, ""},
		{`[{"name":"san","type":"iscsi","size":0,"hosts":[]}]`, "pool san is not served by storage yet"},
		{`[{"name":"san","type":"iscsi","size":1000,"hosts":["host1"]}]`, "pool san is not served by storage yet"},
		{`[]`, "pool san is not served by storage yet"},
		{`nope`, "parse pool list"},
	} {
		err := poolServed(c.list, "san", "storage")
		if (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("poolServed(%s) = %v; want %q", c.list, err, c.err)
		}
	}
}

func TestHostsUp(t *testing.T) {
	for _, c := range []struct {
		list  string
		hosts int
		err   string
	}{
		{`[{"name":"host1","state":"up"},{"name":"host2","state":"up"}]`, 2, ""},
		{`[{"name":"host2","state":"up"},{"name":"host1","state":"up"},{"name":"other","state":"down"}]`, 2, ""},
		{`[{"name":"host1","state":"up"}]`, 2, "host2 (not joined)"},
		{`[{"name":"host1","state":"down"},{"name":"host2","state":"up"}]`, 2, "host1 (down)"},
		{`[]`, 1, "host1 (not joined)"},
		{`nope`, 1, "parse host list"},
	} {
		err := hostsUp(c.list, c.hosts)
		if (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("hostsUp(%s, %d) = %v; want %q", c.list, c.hosts, err, c.err)
		}
	}
}

func TestMentions(t *testing.T) {
	for _, c := range []struct {
		argv []string
		path string
		want bool
	}{
		{[]string{"shoal", "--data-dir", "/lab/host1"}, "/lab", true},
		{[]string{"shoal", "--data-dir", "/lab/host1"}, "/lab/host1", true},
		{[]string{"shoal", "--data-dir", "/lab/host10"}, "/lab/host1", false},
		{[]string{"shoal", "--shared-pool", "shared=/lab/shared"}, "/lab", true},
		{[]string{"qemu-system-x86_64", "-drive", "file=/lab/host2/vms/a/disk.qcow2,if=virtio"}, "/lab/host2", true},
		{[]string{"qemu-system-x86_64", "-drive", "file=/lab2/host2/disk.qcow2"}, "/lab", false},
		{[]string{"qemu-system-x86_64", "-pidfile", "/lab"}, "/lab/", true},
		{[]string{"sleep", "3600"}, "/lab", false},
		{[]string{"x", "/labx/a", "/lab"}, "/lab", true},
		{nil, "/lab", false},
		{[]string{"/"}, "/", false},
	} {
		if got := mentions(c.argv, c.path); got != c.want {
			t.Errorf("mentions(%q, %q) = %v; want %v", c.argv, c.path, got, c.want)
		}
	}
}

func TestIsQEMU(t *testing.T) {
	for argv0, want := range map[string]bool{"/usr/bin/qemu-system-x86_64": true, "qemu-system-aarch64": true, "qemu-img": false, "/usr/bin/shoal": false, "": false} {
		if got := isQEMU([]string{argv0}); got != want {
			t.Errorf("isQEMU(%q) = %v", argv0, got)
		}
	}
}

func TestLinkFlagsUp(t *testing.T) {
	for line, want := range map[string]bool{
		"5: sw-host1@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master sw0 state UP": true,
		"5: sw-host1@if2: <BROADCAST,MULTICAST> mtu 1500 qdisc noqueue master sw0 state DOWN":           false,
		"5: x: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 state LOWERLAYERDOWN":                       true,
		"5: x: <BROADCAST,MULTICAST,LOWER_UP> mtu 1500 state UP":                                        false,
		"garbage": false,
	} {
		if got := linkFlagsUp(line); got != want {
			t.Errorf("linkFlagsUp(%q) = %v", line, got)
		}
	}
}

func TestCleanDir(t *testing.T) {
	if d, err := cleanDir(""); err != nil || d != DefaultDir {
		t.Errorf("cleanDir(\"\") = %q, %v", d, err)
	}
	if d, err := cleanDir("/tmp/x/../lab"); err != nil || d != "/tmp/lab" {
		t.Errorf("cleanDir = %q, %v", d, err)
	}
	for _, bad := range []string{"/", "/tmp/a b", "/tmp/a,b", "/tmp/a=b", "/tmp/a:b"} {
		if d, err := cleanDir(bad); err == nil {
			t.Errorf("cleanDir(%q) = %q; want an error", bad, d)
		}
	}
}

func TestUpRefusesBadOptions(t *testing.T) {
	ctx, log := context.Background(), slog.New(slog.DiscardHandler)
	dir := filepath.Join(t.TempDir(), "lab")
	for _, o := range []Options{
		{Dir: dir, Hosts: 0, Binary: "/bin/true"},
		{Dir: dir, Hosts: MaxHosts + 1, Binary: "/bin/true"},
		{Dir: dir, Hosts: 1},
		{Dir: "/", Hosts: 1, Binary: "/bin/true"},
	} {
		if _, err := Up(ctx, log, o); err == nil {
			t.Errorf("Up(%+v) succeeded", o)
		}
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("a refused Up made %s", dir)
	}
	// A directory with someone's files is never taken (down would remove it).
	busy := t.TempDir()
	os.WriteFile(filepath.Join(busy, "precious"), []byte("x"), 0o600)
	if _, err := Up(ctx, log, Options{Dir: busy, Hosts: 1, Binary: "/bin/true"}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("Up over a dir with files: %v", err)
	}
	if _, err := os.Stat(filepath.Join(busy, "precious")); err != nil {
		t.Error(err)
	}
}

func TestDownWithoutLab(t *testing.T) {
	dir := t.TempDir()
	if err := Down(context.Background(), slog.New(slog.DiscardHandler), filepath.Join(dir, "none")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "keep"), []byte("x"), 0o600)
	if err := Down(context.Background(), slog.New(slog.DiscardHandler), dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "keep")); err != nil {
		t.Errorf("down without a lab removed files: %v", err)
	}
}

func TestUserConfigRoundTrip(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, c := range []struct {
		name    string
		before  string // "" = no file
		changed string // the user rewrites the file while the lab runs
		after   string // "" = no file
	}{
		{"none before", "", "", ""},
		{"kept and restored", `{"server":"https://mine"}`, "", `{"server":"https://mine"}`},
		{"changed by the user", `{"server":"https://mine"}`, `{"server":"https://new"}`, `{"server":"https://new"}`},
		{"none before, changed", "", `{"server":"https://new"}`, `{"server":"https://new"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s := &State{Dir: filepath.Join(dir, "lab")}
			os.MkdirAll(s.Dir, 0o755)
			labCfg, _ := json.Marshal(map[string]string{"server": s.Layout().SocketURL(), "token": "t"})
			os.WriteFile(s.Layout().Config(), labCfg, 0o600)
			user := filepath.Join(dir, "home", ".config", "shoal", "config.json")
			if c.before != "" {
				os.MkdirAll(filepath.Dir(user), 0o700)
				os.WriteFile(user, []byte(c.before), 0o600)
			}
			if err := installUserConfig(s, user); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(user); string(b) != string(labCfg) {
				t.Fatalf("installed %q", b)
			}
			if st, _ := os.Stat(user); st.Mode().Perm() != 0o600 {
				t.Errorf("mode %v", st.Mode())
			}
			if c.changed != "" {
				os.WriteFile(user, []byte(c.changed), 0o600)
			}
			if err := restoreUserConfig(log, s); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(user)
			if c.after == "" && err == nil || c.after != "" && string(b) != c.after {
				t.Errorf("after down: %q, %v; want %q", b, err, c.after)
			}
			if c.changed == "" {
				if _, err := os.Stat(user + backupSuffix); err == nil {
					t.Error("the backup is still there")
				}
			}
		})
	}
}

func TestStateRecordsProcs(t *testing.T) {
	s := &State{Dir: t.TempDir(), Hosts: 2}
	s.setProc(Proc{Name: "server", Pid: 1})
	s.setProc(Proc{Name: "agent-host1", Pid: 2})
	s.setProc(Proc{Name: "server", Pid: 3})
	if err := s.save(); err != nil {
		t.Fatal(err)
	}
	got, err := Load(s.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Procs, []Proc{{Name: "server", Pid: 3}, {Name: "agent-host1", Pid: 2}}) {
		t.Errorf("procs %+v", got.Procs)
	}
	if !reflect.DeepEqual(got.Members(), []string{"ctl", "client", "storage", "host1", "host2"}) {
		t.Errorf("members %v", got.Members())
	}
	if st, _ := os.Stat(s.Layout().State()); st.Mode().Perm() != 0o600 {
		t.Errorf("state mode %v", st.Mode())
	}
}
