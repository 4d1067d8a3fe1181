package image

import (
	"fmt"
	"strings"
	"testing"
)

// fakeLogDisk is a disk as guest/disklog.sh leaves it after the writes
// given as "boot seq" strings, in the order they reached the disk, each
// at the position the writer believed next. dual is sector 9's content.
type write struct {
	pos       int
	boot      string
	seq       int
	headAfter bool
}

func fakeLogDisk(writes []write, dual string) []byte {
	disk := make([]byte, (diskLogRecords+64)*diskLogSector)
	put := func(sec int, s string) {
		off := sec * diskLogSector
		clear(disk[off : off+diskLogSector])
		copy(disk[off:], s+"\n")
	}
	for _, w := range writes {
		put(diskLogRecords+w.pos%diskLogRing, fmt.Sprintf("SHOALLOG %d %s %d", w.pos, w.boot, w.seq))
		if w.headAfter {
			put(diskLogHead, fmt.Sprintf("SHOALHEAD %d %s", w.pos+1, w.boot))
		}
	}
	if dual != "" {
		put(diskLogDual, dual)
	}
	return disk
}

// bootRun is n consecutive writes by boot from position at, seq from 0.
func bootRun(boot string, at, n int) []write {
	var ws []write
	for i := range n {
		ws = append(ws, write{at + i, boot, i, true})
	}
	return ws
}

func TestParseDiskLog(t *testing.T) {
	interleaved := append(bootRun("aaa", 0, 5), write{5, "bbb", 0, true}, write{6, "aaa", 5, true}, write{7, "bbb", 2, true})
	crashBeforeHead := append(bootRun("aaa", 0, 3), write{3, "aaa", 3, false}) // killed between record and head
	crashBeforeHead = append(crashBeforeHead, bootRun("bbb", 3, 2)...)
	overwrittenStart := append(bootRun("aaa", 0, 4), write{4, "bbb", 0, true}, write{5, "bbb", 1, true})
	overwrittenStart = append(overwrittenStart, write{4, "ccc", 0, false}, write{6, "bbb", 2, true})
	for _, tc := range []struct {
		name     string
		disk     []byte
		runs     string // boot:records,...
		problems []string
	}{
		{"blank disk", make([]byte, 64*diskLogSector), "", nil},
		{"one boot", fakeLogDisk(bootRun("aaa", 0, 7), ""), "aaa:7", nil},
		{"restart after restart", fakeLogDisk(append(append(bootRun("aaa", 0, 4), bootRun("bbb", 4, 3)...), bootRun("ccc", 7, 1)...), ""), "aaa:4,bbb:3,ccc:1", nil},
		{"killed between record and head", fakeLogDisk(crashBeforeHead, ""), "aaa:3,bbb:2", nil},
		{"two writers interleaved", fakeLogDisk(interleaved, ""), "aaa:5,bbb:1,aaa:1,bbb:1", []string{"boot aaa writes again", "boot bbb writes again"}},
		{"a start overwritten", fakeLogDisk(overwrittenStart, ""), "aaa:4,ccc:1,bbb:2", []string{"boot bbb starts with record 1"}},
		{"dual mark", fakeLogDisk(bootRun("aaa", 0, 2), "SHOALDUAL bbb expected head 9, found: SHOALHEAD 10 aaa"), "aaa:2", []string{"SHOALDUAL bbb"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := ParseDiskLog(tc.disk)
			if err != nil {
				t.Fatal(err)
			}
			var runs []string
			for _, r := range l.Runs {
				runs = append(runs, fmt.Sprintf("%s:%d", r.Boot, r.Records))
			}
			if got := strings.Join(runs, ","); got != tc.runs {
				t.Errorf("runs %s, want %s (%s)", got, tc.runs, l.Summary())
			}
			if len(l.Problems) != len(tc.problems) {
				t.Fatalf("problems %q, want %d like %q", l.Problems, len(tc.problems), tc.problems)
			}
			for i, p := range tc.problems {
				if !strings.Contains(l.Problems[i], p) {
					t.Errorf("problem %d %q, want it to say %q", i, l.Problems[i], p)
				}
			}
		})
	}
	bad := make([]byte, 64*diskLogSector)
	copy(bad[diskLogHead*diskLogSector:], "ext4 superblock or so")
	if _, err := ParseDiskLog(bad); err == nil {
		t.Error("a foreign sector 8 parsed as a log")
	}
}
