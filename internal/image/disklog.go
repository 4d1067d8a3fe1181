package image

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// The tiny guest's disk write log (guest/disklog.sh): twice a second the
// running guest writes a record naming its boot to the next position of
// a ring on its first disk, and then the head. One writer at a time
// leaves the boots in contiguous runs, each boot's records numbered
// without a gap; two copies of the VM writing at once leave a boot that
// comes back after another's run, a gap, or a SHOALDUAL mark (a writer
// found the head moved under it).
const (
	diskLogSector  = 512
	diskLogHead    = 8  // sector of the head
	diskLogDual    = 9  // sector of the two-writers mark
	diskLogRecords = 16 // first sector of the ring
	diskLogRing    = 65536
)

// DiskLog is what a tiny guest's disk says about who wrote it.
type DiskLog struct {
	Head     int          // positions written so far
	Runs     []DiskLogRun // the boots that wrote the log, oldest first
	Problems []string     // evidence of two writers at once; empty when there were none
}

// DiskLogRun is a stretch of the log written by one boot of the guest.
type DiskLogRun struct {
	Boot     string
	First    int // position of its first record
	Records  int
	FirstSeq int // the boot's own record number at First (0 when the log holds its start)
}

func (r DiskLogRun) String() string {
	return fmt.Sprintf("boot %s: %d records from position %d", r.Boot, r.Records, r.First)
}

// Summary describes the log in one line.
func (l DiskLog) Summary() string {
	parts := make([]string, len(l.Runs))
	for i, r := range l.Runs {
		parts[i] = r.String()
	}
	s := fmt.Sprintf("%d records by %d boots [%s]", l.Head, len(l.Runs), strings.Join(parts, "; "))
	if len(l.Problems) > 0 {
		s += "; TWO WRITERS: " + strings.Join(l.Problems, "; ")
	}
	return s
}

// ParseDiskLog reads the write log from the start of a tiny guest's
// disk (raw bytes, at least up to the ring's end of what was written).
// A disk never logged to has an empty log; one whose log sectors hold
// something else is an error.
func ParseDiskLog(disk []byte) (DiskLog, error) {
	sector := func(i int) []string {
		off := i * diskLogSector
		if off+diskLogSector > len(disk) {
			return nil
		}
		b := disk[off : off+diskLogSector]
		if n := bytes.IndexAny(b, "\n\x00"); n >= 0 {
			b = b[:n]
		}
		return strings.Fields(string(b))
	}
	var l DiskLog
	head := sector(diskLogHead)
	switch {
	case len(head) == 0:
		return l, nil
	case len(head) != 3 || head[0] != "SHOALHEAD":
		return l, fmt.Errorf("disk log: sector %d holds %q, not a head", diskLogHead, strings.Join(head, " "))
	}
	n, err := strconv.Atoi(head[1])
	if err != nil || n < 0 {
		return l, fmt.Errorf("disk log: bad head %q", strings.Join(head, " "))
	}
	l.Head = n
	if d := sector(diskLogDual); len(d) > 0 {
		l.Problems = append(l.Problems, strings.Join(d, " "))
	}
	seen := map[string]bool{}
	for p := max(0, n-diskLogRing); p < n; p++ {
		rec := sector(diskLogRecords + p%diskLogRing)
		if rec == nil {
			return l, fmt.Errorf("disk log: the disk image ends before position %d", p)
		}
		pos, perr := -1, error(nil)
		seq := -1
		if len(rec) == 4 && rec[0] == "SHOALLOG" {
			pos, perr = strconv.Atoi(rec[1])
			if perr == nil {
				seq, perr = strconv.Atoi(rec[3])
			}
		}
		if perr != nil || pos != p || seq < 0 {
			l.Problems = append(l.Problems, fmt.Sprintf("position %d holds %q", p, strings.Join(rec, " ")))
			continue
		}
		boot := rec[2]
		if k := len(l.Runs); k > 0 && l.Runs[k-1].Boot == boot {
			r := &l.Runs[k-1]
			if want := r.FirstSeq + r.Records; seq != want {
				l.Problems = append(l.Problems, fmt.Sprintf("position %d: boot %s record %d, want %d", p, boot, seq, want))
			}
			r.Records++
			continue
		}
		if seen[boot] {
			l.Problems = append(l.Problems, fmt.Sprintf("position %d: boot %s writes again after boot %s", p, boot, l.Runs[len(l.Runs)-1].Boot))
		} else if seq != 0 && p > max(0, n-diskLogRing) {
			// A boot's record 0 lies where its predecessor's head
			// pointed; a later first record means another writer
			// overwrote its start.
			l.Problems = append(l.Problems, fmt.Sprintf("position %d: boot %s starts with record %d", p, boot, seq))
		}
		seen[boot] = true
		l.Runs = append(l.Runs, DiskLogRun{Boot: boot, First: p, Records: 1, FirstSeq: seq})
	}
	return l, nil
}
