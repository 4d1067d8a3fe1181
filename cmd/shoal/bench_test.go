package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/cloudinit"
	"github.com/shoalvm/shoal/internal/image"
	"github.com/shoalvm/shoal/internal/qemu"
	"github.com/shoalvm/shoal/internal/storage"
)

// BenchmarkLaunch compares 'shoal vm create --start' with a plain
// qemu-system-x86_64 launch of the same VM (same argv, disk, seed and
// bridge), in the same run: time until QEMU runs, and until the guest
// answers HTTP. Run with: make bench (or go test -run '^$' -bench Launch ./cmd/shoal).
func BenchmarkLaunch(b *testing.B) {
	l := newLab(b)
	l.start()
	var shoalRun, shoalHTTP, plainRun, plainHTTP []time.Duration
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("bench%d", i)
		t0 := time.Now()
		l.mustShoal("vm", "create", name, "--image", "tiny", "--start")
		shoalRun = append(shoalRun, time.Since(t0))
		vm := l.vm(name)
		l.pollHTTP(vm.IP)
		shoalHTTP = append(shoalHTTP, time.Since(t0))
		l.mustShoal("vm", "delete", "--force", name)

		r, h := l.plainLaunch(i)
		plainRun, plainHTTP = append(plainRun, r), append(plainHTTP, h)
	}
	b.StopTimer()
	mr, mh := median(shoalRun)-median(plainRun), median(shoalHTTP)-median(plainHTTP)
	b.ReportMetric(ms(median(shoalRun)), "shoal-running-ms")
	b.ReportMetric(ms(median(plainRun)), "plain-running-ms")
	b.ReportMetric(ms(median(shoalHTTP)), "shoal-http-ms")
	b.ReportMetric(ms(median(plainHTTP)), "plain-http-ms")
	b.ReportMetric(ms(mr), "added-running-ms")
	b.ReportMetric(ms(mh), "added-http-ms")
	b.Logf("median of %d: to QEMU running shoal %v plain %v (added %v); to HTTP shoal %v plain %v (added %v)",
		b.N, median(shoalRun), median(plainRun), mr, median(shoalHTTP), median(plainHTTP), mh)
}

// BenchmarkNodeMemory reports the resident memory of the 'shoal up'
// process (etcd, server and agent together) with 10 VMs running.
func BenchmarkNodeMemory(b *testing.B) {
	l := newLab(b)
	l.start()
	idle := rssMiB(l.node.Process.Pid)
	for i := 0; i < 10; i++ {
		l.mustShoal("vm", "create", fmt.Sprintf("m%d", i), "--image", "tiny", "--memory", "128M", "--start")
	}
	for i := 0; i < 10; i++ {
		l.waitServing(l.vm(fmt.Sprintf("m%d", i)).IP, 3*time.Minute)
	}
	for i := 0; i < b.N; i++ {
		l.mustShoal("vm", "list")
	}
	b.StopTimer()
	busy := rssMiB(l.node.Process.Pid)
	b.ReportMetric(idle, "node-rss-MiB-0vms")
	b.ReportMetric(busy, "node-rss-MiB-10vms")
	b.Logf("shoal up RSS: %.1f MiB with no VM, %.1f MiB with 10 VMs running", idle, busy)
	for i := 0; i < 10; i++ {
		l.mustShoal("vm", "delete", "--force", fmt.Sprintf("m%d", i))
	}
}

// plainLaunch starts the same VM with qemu-system-x86_64 directly.
func (l *testNode) plainLaunch(i int) (toRunning, toHTTP time.Duration) {
	l.t.Helper()
	ctx := context.Background()
	dir := filepath.Join(l.dir, fmt.Sprintf("plain%d", i))
	tiny := filepath.Join(l.dir, "data", "images", "tiny")
	disk := filepath.Join(dir, "disk.qcow2")
	if err := storage.CreateOverlay(ctx, filepath.Join(tiny, image.TinyDiskFile), disk, 64<<20); err != nil {
		l.t.Fatal(err)
	}
	ip, mac, tap := "10.57.0.240", "52:54:00:00:00:f0", "bplain"
	seed := filepath.Join(dir, "seed.iso")
	if err := cloudinit.WriteSeed(ctx, seed, cloudinit.Seed{InstanceID: "plain", Hostname: "plain", MAC: mac,
		Address: ip + "/24", Gateway: "10.57.0.1"}); err != nil {
		l.t.Fatal(err)
	}
	l.run("ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr")
	l.run("ip", "link", "set", tap, "master", "shoal0", "up")
	defer l.run("ip", "link", "del", tap)
	args, err := qemu.Args(qemu.Config{Name: "plain", Dir: dir, Accel: "tcg", CPUs: 1, MemoryMiB: 256,
		Kernel: filepath.Join(tiny, image.TinyKernelFile), Initrd: filepath.Join(tiny, image.TinyInitrdFile), Cmdline: image.TinyCmdline,
		Disks: []qemu.Disk{{Path: disk, Format: "qcow2", Serial: "disk0"}, {Path: seed, Format: "raw", ReadOnly: true, Serial: "cidata"}}})
	if err != nil {
		l.t.Fatal(err)
	}
	args = append(args, "-netdev", "tap,id=net0,ifname="+tap+",script=no,downscript=no,vnet_hdr=on",
		"-device", "virtio-net-pci,netdev=net0,mac="+mac)
	t0 := time.Now()
	l.run(append([]string{"qemu-system-x86_64"}, args...)...)
	toRunning = time.Since(t0)
	l.pollHTTP(ip)
	toHTTP = time.Since(t0)
	pid, err := os.ReadFile(filepath.Join(dir, qemu.PidFile))
	if err != nil {
		l.t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(pid)))
	_ = syscall.Kill(n, syscall.SIGKILL)
	for syscall.Kill(n, 0) == nil {
		time.Sleep(5 * time.Millisecond)
	}
	return toRunning, toHTTP
}

// pollHTTP asks the guest every 10 ms until it answers.
func (l *testNode) pollHTTP(ip string) {
	l.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if _, err := l.get(ip); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	l.t.Fatalf("%s never answered", ip)
}

func rssMiB(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
