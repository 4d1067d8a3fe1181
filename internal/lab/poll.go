package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A Poller is a client of a VM in the lab, as a user would be: from a lab
// namespace (normally "client") it sends GET / to the VM over a new TCP
// connection at a fixed interval, one request at a time, and keeps what it
// saw: failed requests, the longest wait for an answer, and whether the
// tiny guest's boot id, request count and disk counter went on as they
// should.
type Poller struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu  sync.Mutex
	res PollResult
}

// PollResult is what a Poller saw.
type PollResult struct {
	Requests   int
	Failed     int
	Errors     []string      // the first few failures
	MaxLatency time.Duration // the longest request: the client's worst stall
	MaxAt      time.Time     // when it started
	Boots      []string      // distinct boot ids, in order
	CountJumps int           // answers whose count was not the last one plus one
	DiskJumps  int           // same for the disk counter
	FirstCount int
	LastCount  int
	LastDisk   int
	Latencies  []time.Duration // of every request, in order
	Connects   []time.Duration // of every request: the TCP handshake's part
	Starts     []time.Time
}

// Percentile returns the latency below which q (0..1) of the requests
// answered.
func (r PollResult) Percentile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	s := slices.Clone(r.Latencies)
	slices.Sort(s)
	return s[min(int(q*float64(len(s))), len(s)-1)]
}

// pollTimeout bounds one request; longer is a failure.
const pollTimeout = 5 * time.Second

// StartPoller starts polling http://ip/ from namespace ns every interval.
func StartPoller(ctx context.Context, ns, ip string, interval time.Duration) (*Poller, error) {
	ctx, cancel := context.WithCancel(ctx)
	p := &Poller{cancel: cancel, done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		defer close(p.done)
		runtime.LockOSThread() // never unlocked: the thread, left in ns, ends with the goroutine
		if err := enterNS(ns); err != nil {
			ready <- err
			return
		}
		ready <- nil
		p.loop(ctx, ip, interval)
	}()
	if err := <-ready; err != nil {
		cancel()
		return nil, err
	}
	return p, nil
}

func enterNS(name string) error {
	f, err := os.Open(filepath.Join(netnsDir, name))
	if err != nil {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter namespace %s: %w", name, err)
	}
	return nil
}

func (p *Poller) loop(ctx context.Context, ip string, interval time.Duration) {
	next := time.Now()
	for ctx.Err() == nil {
		start := time.Now()
		answer, conn, err := getOnce(ip)
		p.record(start, time.Since(start), conn, answer, err)
		next = next.Add(interval)
		if d := time.Until(next); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		} else {
			next = time.Now()
		}
	}
}

// getOnce makes one request on a new connection and returns the body and
// how long the connection took to open.
func getOnce(ip string) (string, time.Duration, error) {
	start := time.Now()
	deadline := start.Add(pollTimeout)
	c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, "80"), pollTimeout)
	conn := time.Since(start)
	if err != nil {
		return "", conn, err
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: "+ip+"\r\n\r\n"); err != nil {
		return "", conn, err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", conn, err
	}
	_, body, ok := strings.Cut(string(b), "\r\n\r\n")
	if !ok || !strings.HasPrefix(body, "boot=") {
		return "", conn, fmt.Errorf("unexpected answer %q", string(b))
	}
	return strings.TrimSpace(body), conn, nil
}

func (p *Poller) record(start time.Time, took, conn time.Duration, answer string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := &p.res
	r.Requests++
	r.Latencies = append(r.Latencies, took)
	r.Connects = append(r.Connects, conn)
	r.Starts = append(r.Starts, start)
	if took > r.MaxLatency {
		r.MaxLatency, r.MaxAt = took, start
	}
	if err != nil {
		r.Failed++
		if len(r.Errors) < 5 {
			r.Errors = append(r.Errors, start.Format("15:04:05.000")+": "+err.Error())
		}
		return
	}
	f := fields(answer)
	boot := f["boot"]
	count, _ := strconv.Atoi(f["count"])
	disk, _ := strconv.Atoi(f["disk"])
	if len(r.Boots) == 0 || r.Boots[len(r.Boots)-1] != boot {
		r.Boots = append(r.Boots, boot)
	}
	if r.FirstCount == 0 {
		r.FirstCount = count
	} else {
		if count != r.LastCount+1 {
			r.CountJumps++
		}
		if disk != r.LastDisk+1 {
			r.DiskJumps++
		}
	}
	r.LastCount, r.LastDisk = count, disk
}

func fields(answer string) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Fields(answer) {
		if k, v, ok := strings.Cut(f, "="); ok {
			m[k] = v
		}
	}
	return m
}

// Result returns what the poller has seen so far.
func (p *Poller) Result() PollResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.res
	r.Boots = append([]string(nil), r.Boots...)
	r.Errors = append([]string(nil), r.Errors...)
	r.Latencies = slices.Clone(r.Latencies)
	r.Connects = slices.Clone(r.Connects)
	r.Starts = slices.Clone(r.Starts)
	return r
}

// Stop ends polling and returns the result.
func (p *Poller) Stop() PollResult {
	p.cancel()
	<-p.done
	return p.Result()
}

// String summarises a result in one line.
func (r PollResult) String() string {
	return fmt.Sprintf("%d requests, %d failed, median %s, p99 %s, longest %s, boots %d, count %d..%d (%d jumps), disk %d (%d jumps)",
		r.Requests, r.Failed, r.Percentile(0.5).Round(time.Millisecond), r.Percentile(0.99).Round(time.Millisecond), r.MaxLatency.Round(time.Millisecond), len(r.Boots), r.FirstCount, r.LastCount, r.CountJumps, r.LastDisk, r.DiskJumps)
}
