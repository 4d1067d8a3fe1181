package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/client"
	"github.com/shoalvm/shoal/internal/image"
	"github.com/shoalvm/shoal/internal/qemu"
)

// tlsConfig serves the API: any client may connect (users prove who they
// are with a token), and agents present certificates of the cluster CA.
func tlsConfig(cert tls.Certificate, caPEM []byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("cluster CA does not parse")
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}, nil
}

type accelResult struct {
	Accel  string `json:"accel"`
	Reason string `json:"reason"`
	Kernel string `json:"kernel"`
}

// chooseAccel decides between KVM and TCG. A KVM that exists but does
// not run a guest is common in nested setups, so "auto" boots the tiny
// guest (in tinyDir; fetch, if set, brings it there) once under KVM and
// remembers the answer in dataDir for that kernel.
func chooseAccel(ctx context.Context, log *slog.Logger, want, dataDir, tinyDir string, fetch func(context.Context) error) (string, string) {
	switch want {
	case "kvm":
		return "kvm", ""
	case "tcg":
		return "tcg", "chosen with --accel tcg"
	}
	kernel := filepath.Join(tinyDir, image.TinyKernelFile)
	cache := filepath.Join(dataDir, "accel.json")
	var r accelResult
	if b, err := os.ReadFile(cache); err == nil && json.Unmarshal(b, &r) == nil && r.Accel != "" &&
		(r.Kernel == fileStamp(kernel) || !fileExists(kernel)) {
		return r.Accel, r.Reason
	}
	if fetch != nil && !fileExists(filepath.Join(tinyDir, image.TinyDiskFile)) {
		if err := fetch(ctx); err != nil {
			return "tcg", "could not test KVM: " + err.Error()
		}
	}
	accel, reason := qemu.ProbeAccel(ctx, log, "qemu-system-x86_64", kernel, filepath.Join(tinyDir, image.TinyInitrdFile), image.TinyCmdline, 8*time.Second)
	log.Info("accelerator probed", "accel", accel, "reason", reason)
	b, _ := json.Marshal(accelResult{Accel: accel, Reason: reason, Kernel: fileStamp(kernel)})
	_ = os.WriteFile(cache, b, 0o640)
	return accel, reason
}

// CachedAccel returns the accelerator decision an earlier node start
// recorded in dataDir, if any.
func CachedAccel(dataDir string) (accel, reason string, ok bool) {
	var r accelResult
	b, err := os.ReadFile(filepath.Join(dataDir, "accel.json"))
	if err != nil || json.Unmarshal(b, &r) != nil || r.Accel == "" {
		return "", "", false
	}
	return r.Accel, r.Reason, true
}

func fileStamp(p string) string {
	fi, err := os.Stat(p)
	if err != nil {
		return ""
	}
	return fi.ModTime().UTC().Format(time.RFC3339Nano)
}

// ensureDemo creates and starts the demo VM unless it exists, and returns it.
func ensureDemo(ctx context.Context, server, token string) (api.VM, error) {
	c, err := client.New(server, token, nil)
	if err != nil {
		return api.VM{}, err
	}
	vm, err := c.GetVM(ctx, "demo")
	if api.IsNotFound(err) {
		return c.CreateVM(ctx, api.CreateVMRequest{Name: "demo", Image: "tiny", Memory: "256M", Start: true}, true)
	}
	if err == nil && vm.Power == api.PowerStopped {
		return c.VMAction(ctx, "demo", "start", false)
	}
	return vm, err
}
