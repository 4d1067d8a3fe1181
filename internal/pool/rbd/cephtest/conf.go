package cephtest

import (
	"fmt"
	"strings"
)

// Names of the cluster's daemons and of what it makes for clients.
const (
	monID   = "a"
	mgrID   = "x"
	osdID   = "0"
	Pool    = "rbd"   // the RBD pool every cluster has
	User    = "shoal" // its client user (client.shoal), limited to Pool
	monPort = 3300    // msgr2; msgr1 listens on 6789
)

// unneededMgrModules are manager modules that are never loaded: each
// costs memory and start time, and a test needs none of them. Those
// that are always on (the second line) raise MGR_MODULE_ERROR when not
// loaded, which Start mutes.
var unneededMgrModules = []string{"alerts", "cephadm", "dashboard", "diskprediction_local",
	"influx", "insights", "iostat", "k8sevents", "localpool", "mds_autoscaler", "mirroring",
	"nfs", "osd_perf_query", "osd_support", "prometheus", "restful", "rook", "selftest",
	"snap_schedule", "stats", "telegraf", "test_orchestrator", "zabbix",
	"balancer", "crash", "devicehealth", "orchestrator", "pg_autoscaler", "progress", "telemetry", "volumes"}

// config is the cluster's ceph.conf: everything in dir, one replica, and
// the knobs that make a one-OSD cluster start fast and stay small.
func config(dir, fsid, addr string, osdBytes int64) string {
	lines := []string{
		"[global]",
		"fsid = " + fsid,
		fmt.Sprintf("mon host = [v2:%s:%d,v1:%s:6789]", addr, monPort, addr),
		"public addr = " + addr,
		"auth cluster required = cephx",
		"auth service required = cephx",
		"auth client required = cephx",
		"auth allow insecure global id reclaim = false",
		"keyring = " + dir + "/$name.keyring",
		"run dir = " + dir + "/run",
		"admin socket = " + dir + "/run/$name.asok",
		"log file = " + dir + "/log/$name.log",
		"mon cluster log file = " + dir + "/log/cluster.log",
		"crash dir = " + dir + "/crash",
		"mon data = " + dir + "/mon",
		"mgr data = " + dir + "/mgr",
		"osd data = " + dir + "/osd/data",
		"osd pool default size = 1",
		"osd pool default min size = 1",
		"osd pool default pg num = 8",
		"osd pool default pgp num = 8",
		"osd pool default pg autoscale mode = off",
		"osd crush chooseleaf type = 0",
		"mon allow pool size one = true",
		"mon warn on pool no redundancy = false",
		"mon data avail warn = 1",
		"mon data avail crit = 0",
		// A single monitor proposes each change at once instead of
		// batching for a second: the OSD boots and peers in about 1 s.
		"paxos propose interval = 0.05",
		"paxos min wait = 0.01",
		"mgr disabled modules = " + strings.Join(unneededMgrModules, " "),
		"[osd]",
		"osd objectstore = bluestore",
		"bluestore block path = " + dir + "/osd/block",
		"bluestore block create = true",
		fmt.Sprintf("bluestore block size = %d", osdBytes),
		"bluestore fsck on mkfs = false",
		// The OSD opens and closes its file about ten times while it
		// starts, and each close waits for the I/O thread's poll (250
		// ms by default).
		"bdev aio poll ms = 20",
		// The memory target has a floor of 896 MiB; a fixed cache
		// keeps the OSD well under it.
		"bluestore cache autotune = false",
		"bluestore cache size = 67108864",
		"osd memory target = 939524096",
		"",
	}
	return strings.Join(lines, "\n")
}

// clientConfig is a ceph.conf for a client of the cluster at addr.
func clientConfig(addr, keyringPath string) string {
	return fmt.Sprintf("[global]\nmon host = [v2:%s:%d,v1:%s:6789]\nkeyring = %s\n", addr, monPort, addr, keyringPath)
}
