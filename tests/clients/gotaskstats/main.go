// gotaskstats: a taskstats client in Go on mdlayher/genetlink, as exporters and agents write
// them. Its system calls are the Go runtime's own (with or without cgo), so the LD_PRELOAD
// shim never sees them: only tsemu-run's seccomp supervisor reaches it.
//
//	gotaskstats families          the generic-netlink families, one name a line
//	gotaskstats pid N|self        TASKSTATS_CMD_GET by pid
//	gotaskstats tgid N|self       TASKSTATS_CMD_GET by tgid
//	gotaskstats listen MASK N     register MASK for exits, print "ready", then N exits
//	gotaskstats bench N [PID]     N GET round trips (about PID, default itself): JSON
//	gotaskstats threads N         N goroutines each doing GETs on their own socket
//	gotaskstats proclist          list /proc as exporters do: each pid, its comm (read from
//	                              /proc/PID/comm) and the tgid its TGID stats name
//	gotaskstats cgroupstats DIR   CGROUPSTATS_CMD_GET naming an open descriptor of the cgroup
//	                              directory DIR: its five counters, as getdelays -C prints them
//
// Each result is one line of key=value words; an error is "error=..." and exit status 1.
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

const (
	cmdGet            = 1
	cmdNew            = 2
	attrPID           = 1
	attrTGID          = 2
	attrRegisterMask  = 3
	typePID           = 1
	typeTGID          = 2
	typeStats         = 3
	typeAggrPID       = 4
	typeAggrTGID      = 5
	statsPidOffset    = 128
	statsCommOffset   = 80
	statsVersionBytes = 2
	// <linux/cgroupstats.h>: the request names a descriptor of the cgroup's directory, the
	// reply carries struct cgroupstats, five __u64 counters in this order.
	cgroupstatsCmdGet   = 4
	cgroupstatsCmdNew   = 5
	cgroupstatsAttrFD   = 1
	cgroupstatsTypeStat = 1
	cgroupstatsBytes    = 5 * 8
)

// cgroupstatsNames are struct cgroupstats' counters, in its order, as getdelays -C names them.
var cgroupstatsNames = [5]string{"sleeping", "running", "stopped", "uninterruptible", "io_wait"}

// errnoNames are the errors a netlink reply may carry that the tests compare by name.
var errnoNames = map[syscall.Errno]string{
	syscall.EINVAL: "EINVAL", syscall.ESRCH: "ESRCH", syscall.EPERM: "EPERM",
	syscall.ENOENT: "ENOENT", syscall.EBADF: "EBADF", syscall.EOPNOTSUPP: "EOPNOTSUPP",
}

func fail(err error) {
	fmt.Printf("error=%v\n", err)
	os.Exit(1)
}

func dial() (*genetlink.Conn, genetlink.Family) {
	c, err := genetlink.Dial(nil)
	if err != nil {
		fail(err)
	}
	f, err := c.GetFamily("TASKSTATS")
	if err != nil {
		fail(err)
	}
	return c, f
}

func number(arg string) uint32 {
	if arg == "self" {
		return uint32(os.Getpid())
	}
	n, err := strconv.ParseUint(arg, 10, 32)
	if err != nil {
		fail(err)
	}
	return uint32(n)
}

// describe prints the records of one TASKSTATS_CMD_NEW message.
func describe(data []byte) string {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return "error=" + err.Error()
	}
	out := ""
	for ad.Next() {
		kind := ad.Type()
		if kind != typeAggrPID && kind != typeAggrTGID {
			continue
		}
		ad.Nested(func(nad *netlink.AttributeDecoder) error {
			for nad.Next() {
				switch nad.Type() {
				case typePID:
					out += fmt.Sprintf("pid=%d ", nad.Uint32())
				case typeTGID:
					out += fmt.Sprintf("tgid=%d ", nad.Uint32())
				case typeStats:
					b := nad.Bytes()
					if len(b) >= statsPidOffset+4 {
						comm := b[statsCommOffset : statsCommOffset+32]
						if i := bytes.IndexByte(comm, 0); i >= 0 {
							comm = comm[:i]
						}
						out += fmt.Sprintf("version=%d comm=%s ac_pid=%d ",
							binary.LittleEndian.Uint16(b[:statsVersionBytes]), comm,
							binary.LittleEndian.Uint32(b[statsPidOffset:]))
					}
				}
			}
			return nil
		})
	}
	if err := ad.Err(); err != nil {
		return "error=" + err.Error()
	}
	return out
}

// fields splits "a=1 b=2 " into a map.
func fields(line string) map[string]string {
	out := map[string]string{}
	for _, word := range bytes.Fields([]byte(line)) {
		if i := bytes.IndexByte(word, '='); i > 0 {
			out[string(word[:i])] = string(word[i+1:])
		}
	}
	return out
}

func get(c *genetlink.Conn, f genetlink.Family, attr uint16, id uint32) (string, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attr, id)
	payload, err := ae.Encode()
	if err != nil {
		return "", err
	}
	msgs, err := c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cmdGet, Version: f.Version},
		Data:   payload,
	}, f.ID, netlink.Request)
	if err != nil {
		return "", err
	}
	out := ""
	for _, m := range msgs {
		out += describe(m.Data)
	}
	return out, nil
}

// cgroupstats asks about the cgroup whose directory is dir: the descriptor travels in the
// request (CGROUPSTATS_CMD_ATTR_FD), so it must stay open until the reply is in.
func cgroupstats(c *genetlink.Conn, f genetlink.Family, dir string) (string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return "", err
	}
	defer d.Close()
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(cgroupstatsAttrFD, uint32(d.Fd()))
	payload, err := ae.Encode()
	if err != nil {
		return "", err
	}
	msgs, err := c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cgroupstatsCmdGet, Version: f.Version},
		Data:   payload,
	}, f.ID, netlink.Request)
	runtime.KeepAlive(d)
	if err != nil {
		return "", err
	}
	for _, m := range msgs {
		if m.Header.Command != cgroupstatsCmdNew {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data)
		if err != nil {
			return "", err
		}
		for ad.Next() {
			b := ad.Bytes()
			if ad.Type() != cgroupstatsTypeStat || len(b) < cgroupstatsBytes {
				continue
			}
			out := "cgroupstats"
			for i, name := range cgroupstatsNames {
				out += fmt.Sprintf(" %s=%d", name, binary.LittleEndian.Uint64(b[8*i:]))
			}
			return out, nil
		}
		if err := ad.Err(); err != nil {
			return "", err
		}
	}
	return "", fmt.Errorf("no CGROUPSTATS_TYPE_CGROUP_STATS in the reply")
}

// errorWord is an error as one word: the errno's name where it has one the tests know.
func errorWord(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if name, ok := errnoNames[errno]; ok {
			return name
		}
	}
	return err.Error()
}

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: gotaskstats families|pid N|tgid N|listen MASK N|bench N|threads N|" +
			"proclist|cgroupstats DIR"))
	}
	switch os.Args[1] {
	case "families":
		c, err := genetlink.Dial(nil)
		if err != nil {
			fail(err)
		}
		fams, err := c.ListFamilies()
		if err != nil {
			fail(err)
		}
		for _, f := range fams {
			fmt.Printf("family=%s id=%d\n", f.Name, f.ID)
		}
	case "pid", "tgid":
		c, f := dial()
		attr := uint16(attrPID)
		if os.Args[1] == "tgid" {
			attr = attrTGID
		}
		out, err := get(c, f, attr, number(os.Args[2]))
		if err != nil {
			fail(err)
		}
		fmt.Println(out)
	case "listen":
		c, f := dial()
		want, _ := strconv.Atoi(os.Args[3])
		ae := netlink.NewAttributeEncoder()
		ae.String(attrRegisterMask, os.Args[2])
		payload, _ := ae.Encode()
		if _, err := c.Send(genetlink.Message{
			Header: genetlink.Header{Command: cmdGet, Version: f.Version},
			Data:   payload,
		}, f.ID, netlink.Request); err != nil {
			fail(err)
		}
		fmt.Println("ready")
		for got := 0; got < want; {
			msgs, _, err := c.Receive()
			if err != nil {
				fail(err)
			}
			for _, m := range msgs {
				if m.Header.Command == cmdNew {
					fmt.Println("exit " + describe(m.Data))
					got++
				}
			}
		}
	case "bench":
		c, f := dial()
		n, _ := strconv.Atoi(os.Args[2])
		self := uint32(os.Getpid())
		if len(os.Args) > 3 {
			self = number(os.Args[3])
		}
		start := time.Now()
		for i := 0; i < n; i++ {
			if _, err := get(c, f, attrPID, self); err != nil {
				fail(err)
			}
		}
		ns := time.Since(start).Nanoseconds()
		fmt.Printf("{\"gets\": %d, \"ns_per_get\": %d, \"rate\": %.1f}\n", n, ns/int64(n),
			float64(n)*1e9/float64(ns))
	case "threads":
		n, _ := strconv.Atoi(os.Args[2])
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, f := dial()
				defer c.Close()
				for j := 0; j < 20; j++ {
					out, err := get(c, f, attrPID, uint32(os.Getpid()))
					if err != nil {
						errs <- err
						return
					}
					if out == "" {
						errs <- fmt.Errorf("empty reply")
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			fail(err)
		}
		fmt.Printf("threads=%d ok\n", n)
	case "proclist":
		c, f := dial()
		entries, err := os.ReadDir("/proc")
		if err != nil {
			fail(err)
		}
		for _, e := range entries {
			pid, err := strconv.ParseUint(e.Name(), 10, 32)
			if err != nil {
				continue
			}
			comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
			if err != nil {
				fmt.Printf("pid=%d error=%v\n", pid, err)
				continue
			}
			out, err := get(c, f, attrTGID, uint32(pid))
			if err != nil {
				fmt.Printf("pid=%d comm=%s error=%v\n", pid, bytes.TrimSpace(comm), err)
				continue
			}
			fmt.Printf("pid=%d comm=%s tgid=%s\n", pid, bytes.TrimSpace(comm),
				fields(out)["tgid"])
		}
	case "cgroupstats":
		c, f := dial()
		out, err := cgroupstats(c, f, os.Args[2])
		if err != nil {
			fmt.Printf("error=%s\n", errorWord(err))
			os.Exit(1)
		}
		fmt.Println(out)
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}
