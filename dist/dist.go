// Package dist owns data-parallel training across processes: a run-time
// binding of the few Open MPI calls sparselora needs (libmpi is opened with
// dlopen, so a binary runs without MPI installed), how a process learns that
// mpirun launched it, and a watchdog that ends the job instead of hanging in
// a collective whose peer died. It prints nothing: hangs are reported through
// a callback.
package dist

/*
#cgo linux LDFLAGS: -ldl
#include <stdlib.h>
#include "mpi.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
	"unsafe"
)

// LibraryEnv names a libmpi to open instead of DefaultLibrary.
const LibraryEnv = "SPARSELORA_MPI_LIB"

// DefaultLibrary is Open MPI's libmpi (4.x and 5.x share the soname).
const DefaultLibrary = "libmpi.so.40"

// Launch is what mpirun tells a process through its environment.
type Launch struct {
	Rank, Size, LocalRank int
}

// FromEnv reads the Open MPI launch variables (OMPI_COMM_WORLD_SIZE, _RANK,
// _LOCAL_RANK). ok is false when mpirun did not start this process, or
// started it alone (a world of one trains as a plain process).
func FromEnv() (l Launch, ok bool, err error) {
	size := os.Getenv("OMPI_COMM_WORLD_SIZE")
	if size == "" {
		return Launch{}, false, nil
	}
	get := func(name string) (int, error) {
		v, err := strconv.Atoi(os.Getenv(name))
		if err != nil || v < 0 {
			return 0, fmt.Errorf("dist: %s=%q is not a rank count or index", name, os.Getenv(name))
		}
		return v, nil
	}
	if l.Size, err = get("OMPI_COMM_WORLD_SIZE"); err != nil {
		return Launch{}, false, err
	}
	if l.Rank, err = get("OMPI_COMM_WORLD_RANK"); err != nil {
		return Launch{}, false, err
	}
	if l.LocalRank, err = get("OMPI_COMM_WORLD_LOCAL_RANK"); err != nil {
		return Launch{}, false, err
	}
	if l.Size < 1 || l.Rank >= l.Size {
		return Launch{}, false, fmt.Errorf("dist: rank %d of a world of %d", l.Rank, l.Size)
	}
	return l, l.Size > 1, nil
}

// Options configure Init.
type Options struct {
	// Timeout bounds one collective: a peer that neither answers nor dies
	// within it (a hung process, a lost host) ends the job. 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// OnHang is called, before the job is aborted, with the collective that
	// waited too long.
	OnHang func(op string, waited time.Duration)
}

// DefaultTimeout is how long a collective may wait for the slowest process.
// A step's collectives wait for the slowest rank's whole step, so it is
// generous; a dead process is noticed by mpirun at once anyway.
const DefaultTimeout = 10 * time.Minute

// Comm is MPI_COMM_WORLD of an initialised MPI. All MPI calls run on one
// locked OS thread (the one that initialised MPI, as MPI_Finalize requires),
// one at a time.
type Comm struct {
	rank, size, localRank int
	opts                  Options
	calls                 chan func()
	finished              bool
}

var loadOnce struct {
	sync.Once
	err error
}

// load opens libmpi once per process.
func load() error {
	loadOnce.Do(func() {
		path := os.Getenv(LibraryEnv)
		if path == "" {
			path = DefaultLibrary
		}
		cpath := C.CString(path)
		defer C.free(unsafe.Pointer(cpath))
		var buf [512]C.char
		if C.sd_load(cpath, &buf[0], C.size_t(len(buf))) != 0 {
			loadOnce.err = fmt.Errorf("dist: cannot load Open MPI's library %s: %s (install openmpi-bin and libopenmpi-dev, `make setup` on Debian, or set %s)",
				path, C.GoString(&buf[0]), LibraryEnv)
		}
	})
	return loadOnce.err
}

// MPI thread levels (Open MPI's enum values).
const (
	threadSerialized = 2
	threadMultiple   = 3
)

// Init loads libmpi and initialises MPI, with errors returned instead of
// aborting; a collective that waits past opts.Timeout aborts the job. A
// process calls it once.
func Init(opts Options) (*Comm, error) {
	if err := load(); err != nil {
		return nil, err
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	// Open MPI's backtrace handlers for SIGSEGV and friends would replace the
	// Go runtime's (a nil dereference must stay a Go panic).
	if _, set := os.LookupEnv("OMPI_MCA_opal_signal"); !set {
		os.Setenv("OMPI_MCA_opal_signal", "")
	}
	c := &Comm{opts: opts, calls: make(chan func())}
	ready := make(chan error)
	go c.serve(ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	if l, _, err := FromEnv(); err == nil {
		c.localRank = l.LocalRank
	}
	return c, nil
}

// serve initialises MPI on a locked OS thread and runs every later call there.
func (c *Comm) serve(ready chan<- error) {
	runtime.LockOSThread()
	var provided C.int
	if code := C.sd_init(threadMultiple, &provided); code != 0 {
		ready <- fmt.Errorf("dist: MPI_Init_thread: %s", errorString(code))
		return
	}
	if provided < threadSerialized {
		C.sd_abort(1)
		ready <- fmt.Errorf("dist: MPI offers thread level %d, sparselora needs MPI_THREAD_SERIALIZED", int(provided))
		return
	}
	var rank, size C.int
	for _, code := range []C.int{C.sd_world_errors_return(), C.sd_rank(&rank), C.sd_size(&size)} {
		if code != 0 {
			ready <- fmt.Errorf("dist: setting up MPI_COMM_WORLD: %s", errorString(code))
			return
		}
	}
	c.rank, c.size = int(rank), int(size)
	ready <- nil
	for f := range c.calls {
		f()
	}
}

func errorString(code C.int) string {
	var buf [600]C.char
	C.sd_error_string(code, &buf[0], C.size_t(len(buf)))
	return C.GoString(&buf[0])
}

// Rank is this process's index in the world.
func (c *Comm) Rank() int { return c.rank }

// Size is the number of processes.
func (c *Comm) Size() int { return c.size }

// LocalRank is this process's index among those on its host.
func (c *Comm) LocalRank() int { return c.localRank }

// onThread runs f on the MPI thread.
func (c *Comm) onThread(f func()) {
	done := make(chan struct{})
	c.calls <- func() { f(); close(done) }
	<-done
}

// collective runs a non-blocking collective on the MPI thread over a copy
// of buf in C memory (MPI holds the buffer after the starting call returns,
// which Go memory must not be lent for), polls it to completion, sleeping
// between polls, and copies the result back. A collective that waits longer
// than the timeout aborts the job.
func (c *Comm) collective(op string, buf []byte, start func(p unsafe.Pointer, req *unsafe.Pointer) C.int) error {
	if c.finished {
		return fmt.Errorf("dist: %s after MPI_Finalize", op)
	}
	p := C.malloc(C.size_t(max(len(buf), 1)))
	defer C.free(p)
	cbuf := unsafe.Slice((*byte)(p), max(len(buf), 1))
	copy(cbuf, buf)
	var code C.int
	c.onThread(func() {
		var req unsafe.Pointer
		if code = start(p, &req); code != 0 {
			return
		}
		began := time.Now()
		pause := 20 * time.Microsecond
		for {
			var done C.int
			if code = C.sd_test(&req, &done); code != 0 || done != 0 {
				return
			}
			if waited := time.Since(began); waited > c.opts.Timeout {
				if c.opts.OnHang != nil {
					c.opts.OnHang(op, waited)
				}
				// mpirun ends every process of the job.
				C.sd_abort(1)
				os.Exit(1)
			}
			time.Sleep(pause)
			pause = min(2*pause, 2*time.Millisecond)
		}
	})
	if code != 0 {
		return fmt.Errorf("dist: %s: %s", op, errorString(code))
	}
	copy(buf, cbuf[:len(buf)])
	return nil
}

// maxCount bounds one MPI call's element count (an int in the C API).
const maxCount = 1 << 28

// SumFloat32 replaces v with its element-wise sum over all processes.
func (c *Comm) SumFloat32(v []float32) error {
	for lo := 0; lo < len(v); lo += maxCount {
		part := v[lo:min(lo+maxCount, len(v))]
		if err := c.allreduce("MPI_Iallreduce(float, sum)", unsafe.Slice((*byte)(unsafe.Pointer(&part[0])), 4*len(part)), len(part), C.sd_float, C.sd_sum); err != nil {
			return err
		}
	}
	return nil
}

func (c *Comm) allreduce(op string, buf []byte, count int, typ, red C.int) error {
	return c.collective(op, buf, func(p unsafe.Pointer, req *unsafe.Pointer) C.int {
		return C.sd_iallreduce(p, C.int(count), typ, red, req)
	})
}

// SumFloat64 replaces v with its element-wise sum over all processes.
func (c *Comm) SumFloat64(v []float64) error {
	if len(v) == 0 {
		return nil
	}
	return c.allreduce("MPI_Iallreduce(double, sum)", unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 8*len(v)), len(v), C.sd_double, C.sd_sum)
}

// Int64 reductions.
type Op int

const (
	Sum Op = iota
	Max
	Min
)

// ReduceInt64 replaces v with its element-wise sum, maximum or minimum over
// all processes.
func (c *Comm) ReduceInt64(v []int64, op Op) error {
	if len(v) == 0 {
		return nil
	}
	cop, name := C.int(C.sd_sum), "sum"
	switch op {
	case Max:
		cop, name = C.sd_max, "max"
	case Min:
		cop, name = C.sd_min, "min"
	}
	return c.allreduce("MPI_Iallreduce(int64, "+name+")", unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 8*len(v)), len(v), C.sd_int64, cop)
}

// BroadcastBytes returns root's b on every process (b is ignored elsewhere).
func (c *Comm) BroadcastBytes(b []byte, root int) ([]byte, error) {
	n := []int64{int64(len(b))}
	if c.rank != root {
		n[0] = 0
	}
	// Only root's length is non-zero, so the sum is root's.
	if err := c.ReduceInt64(n, Sum); err != nil {
		return nil, err
	}
	buf := make([]byte, n[0])
	if c.rank == root {
		copy(buf, b)
	}
	if len(buf) == 0 {
		return buf, nil
	}
	err := c.collective("MPI_Ibcast", buf, func(p unsafe.Pointer, req *unsafe.Pointer) C.int {
		return C.sd_ibcast(p, C.int(len(buf)), C.sd_byte, C.int(root), req)
	})
	return buf, err
}

// Barrier waits until every process reaches it.
func (c *Comm) Barrier() error {
	return c.collective("MPI_Ibarrier", nil, func(_ unsafe.Pointer, req *unsafe.Pointer) C.int { return C.sd_ibarrier(req) })
}

// Abort ends every process of the job with code (MPI_Abort); it returns
// only if MPI could not abort.
func (c *Comm) Abort(code int) {
	c.onThread(func() { C.sd_abort(C.int(code)) })
}

// Finalize shuts MPI down; the Comm is unusable after it.
func (c *Comm) Finalize() error {
	if c.finished {
		return nil
	}
	var code C.int
	c.onThread(func() { code = C.sd_finalize() })
	c.finished = true
	close(c.calls)
	if code != 0 {
		return fmt.Errorf("dist: MPI_Finalize: %s", errorString(code))
	}
	return nil
}

// ErrNoMPI is wrapped by InitFromEnv's error when mpirun launched the process
// but libmpi cannot be loaded.
var ErrNoMPI = errors.New("launched by mpirun, but MPI cannot be used")

// InitFromEnv initialises MPI when mpirun launched this process as one of
// several, and returns nil (train single-process) otherwise.
func InitFromEnv(opts Options) (*Comm, error) {
	l, ok, err := FromEnv()
	if err != nil || !ok {
		return nil, err
	}
	c, err := Init(opts)
	if err != nil {
		return nil, fmt.Errorf("rank %d of %d: %w: %w", l.Rank, l.Size, ErrNoMPI, err)
	}
	if c.size != l.Size {
		return nil, fmt.Errorf("dist: mpirun announced %d processes, MPI_COMM_WORLD has %d", l.Size, c.size)
	}
	return c, nil
}
