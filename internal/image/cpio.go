package image

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
)

// This file implements the "newc" (SVR4, no CRC) cpio format, the one the
// Linux kernel unpacks as an initramfs. Every header is the magic "070701"
// followed by thirteen 8-digit hexadecimal fields, then the NUL-terminated
// name padded to a multiple of four bytes (counting the header), then the data
// padded the same way. The archive ends with an entry named "TRAILER!!!".

const (
	cpioMagic      = "070701"
	cpioHeaderLen  = 110
	cpioTrailer    = "TRAILER!!!"
	cpioTypeMask   = 0o170000
	cpioTypeDir    = 0o040000
	cpioTypeReg    = 0o100000
	cpioTypeLink   = 0o120000
	cpioTypeChar   = 0o020000
	cpioMaxNameLen = 4096
)

// cpioEntry describes one archive member.
type cpioEntry struct {
	Name  string // path inside the archive, without a leading "/"
	Mode  uint32 // file type bits | permission bits (see cpioType*)
	UID   uint32
	GID   uint32
	Major uint32 // device numbers, for character/block devices
	Minor uint32
	Data  []byte // file contents, or the target of a symlink
}

// cpioWriter writes a newc archive. Timestamps are always zero so that the
// same inputs give byte-identical archives.
type cpioWriter struct {
	w      io.Writer
	ino    uint32
	closed bool
	err    error
}

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: w, ino: 1}
}

// Dir adds a directory.
func (c *cpioWriter) Dir(name string, perm fs.FileMode) error {
	return c.write(cpioEntry{Name: name, Mode: cpioTypeDir | uint32(perm.Perm())})
}

// File adds a regular file.
func (c *cpioWriter) File(name string, perm fs.FileMode, data []byte) error {
	return c.write(cpioEntry{Name: name, Mode: cpioTypeReg | uint32(perm.Perm()), Data: data})
}

// Symlink adds a symbolic link name -> target.
func (c *cpioWriter) Symlink(name, target string) error {
	return c.write(cpioEntry{Name: name, Mode: cpioTypeLink | 0o777, Data: []byte(target)})
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	return c.write(cpioEntry{Name: name, Mode: cpioTypeChar | uint32(perm.Perm()), Major: major, Minor: minor})
}

// Close writes the trailer. It does not close the underlying writer.
func (c *cpioWriter) Close() error {
	if c.closed {
		return c.err
	}
	err := c.writeRaw(cpioEntry{Name: cpioTrailer}, 0)
	c.closed = true
	return err
}

func (c *cpioWriter) write(e cpioEntry) error {
	if c.closed {
		return errors.New("cpio: write after close")
	}
	name := strings.TrimPrefix(e.Name, "/")
	if name == "" || name == cpioTrailer || len(name) >= cpioMaxNameLen {
		return fmt.Errorf("cpio: invalid entry name %q", e.Name)
	}
	e.Name = name
	ino := c.ino
	c.ino++
	return c.writeRaw(e, ino)
}

func (c *cpioWriter) writeRaw(e cpioEntry, ino uint32) error {
	if c.err != nil {
		return c.err
	}
	nlink := uint32(1)
	if e.Mode&cpioTypeMask == cpioTypeDir {
		nlink = 2
	}
	if e.Name == cpioTrailer {
		nlink = 1
	}
	var b strings.Builder
	b.Grow(cpioHeaderLen + len(e.Name) + 4)
	b.WriteString(cpioMagic)
	for _, v := range []uint32{
		ino, e.Mode, e.UID, e.GID, nlink,
		0, // mtime
		uint32(len(e.Data)),
		0, 0, // devmajor, devminor (of the archive's own device)
		e.Major, e.Minor,
		uint32(len(e.Name) + 1),
		0, // check
	} {
		fmt.Fprintf(&b, "%08x", v)
	}
	b.WriteString(e.Name)
	b.WriteByte(0)
	b.WriteString(strings.Repeat("\x00", pad4(cpioHeaderLen+len(e.Name)+1)))
	if _, err := io.WriteString(c.w, b.String()); err != nil {
		c.err = fmt.Errorf("cpio: write header of %s: %w", e.Name, err)
		return c.err
	}
	if _, err := c.w.Write(e.Data); err != nil {
		c.err = fmt.Errorf("cpio: write data of %s: %w", e.Name, err)
		return c.err
	}
	if _, err := c.w.Write(make([]byte, pad4(len(e.Data)))); err != nil {
		c.err = fmt.Errorf("cpio: write padding of %s: %w", e.Name, err)
		return c.err
	}
	return nil
}

// pad4 returns how many bytes bring n up to a multiple of four.
func pad4(n int) int { return (4 - n%4) % 4 }

// readCPIO parses a newc archive; it is the inverse of cpioWriter and is used
// to check built images.
func readCPIO(r io.Reader) ([]cpioEntry, error) {
	var out []cpioEntry
	hdr := make([]byte, cpioHeaderLen)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return nil, fmt.Errorf("cpio: read header: %w", err)
		}
		if string(hdr[:6]) != cpioMagic {
			return nil, fmt.Errorf("cpio: bad magic %q", hdr[:6])
		}
		var f [13]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return nil, fmt.Errorf("cpio: bad header field %d: %w", i, err)
			}
			f[i] = uint32(v)
		}
		size, nameLen := int(f[6]), int(f[11])
		if nameLen < 1 || nameLen > cpioMaxNameLen {
			return nil, fmt.Errorf("cpio: bad name length %d", nameLen)
		}
		name := make([]byte, nameLen+pad4(cpioHeaderLen+nameLen))
		if _, err := io.ReadFull(r, name); err != nil {
			return nil, fmt.Errorf("cpio: read name: %w", err)
		}
		e := cpioEntry{
			Name: string(name[:nameLen-1]),
			Mode: f[1], UID: f[2], GID: f[3],
			Major: f[9], Minor: f[10],
		}
		if e.Name == cpioTrailer {
			return out, nil
		}
		data := make([]byte, size+pad4(size))
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, fmt.Errorf("cpio: read data of %s: %w", e.Name, err)
		}
		e.Data = data[:size]
		out = append(out, e)
	}
}
