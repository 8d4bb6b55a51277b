package gpu_test

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/sparselora/sparselora/gpu"
)

// Every buffer created counts in LiveBytes until released, and PeakBytes keeps
// the high-water mark, also under concurrent creation.
func TestLiveAndPeakBytes(t *testing.T) {
	testDevice.ResetPeakBytes()
	base := testDevice.LiveBytes()
	if got := testDevice.PeakBytes(); got != base {
		t.Fatalf("after ResetPeakBytes: peak %d, live %d", got, base)
	}
	a, err := testDevice.NewBuffer(1000, "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := testDevice.NewBuffer(4096, "b")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := testDevice.LiveBytes()-base, int64(1000+4096); got != want {
		t.Errorf("live bytes after two buffers: %d more, want %d", got, want)
	}
	a.Release()
	a.Release() // a second release must not count twice
	if got, want := testDevice.LiveBytes()-base, int64(4096); got != want {
		t.Errorf("live bytes after releasing one: %d more, want %d", got, want)
	}
	if got, want := testDevice.PeakBytes()-base, int64(1000+4096); got != want {
		t.Errorf("peak: %d more, want %d", got, want)
	}
	b.Release()
	if got := testDevice.LiveBytes(); got != base {
		t.Errorf("live bytes after releasing both: %d, want %d", got, base)
	}

	// Concurrent creation: 8 goroutines each hold 3 buffers of 4 KiB at once.
	testDevice.ResetPeakBytes()
	var wg sync.WaitGroup
	var hold, done sync.WaitGroup
	hold.Add(8)
	done.Add(1)
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var bufs []interface{ Release() }
			for range 3 {
				buf, err := testDevice.NewBuffer(4096, "concurrent")
				if err != nil {
					errs <- err
					break
				}
				bufs = append(bufs, buf)
			}
			hold.Done()
			done.Wait()
			for _, buf := range bufs {
				buf.Release()
			}
		}()
	}
	hold.Wait()
	if got, want := testDevice.LiveBytes()-base, int64(8*3*4096); got != want {
		t.Errorf("live bytes with 24 buffers held: %d more, want %d", got, want)
	}
	done.Done()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got, want := testDevice.PeakBytes()-base, int64(8*3*4096); got != want {
		t.Errorf("peak with 24 buffers held at once: %d more, want %d", got, want)
	}
	if got := testDevice.LiveBytes(); got != base {
		t.Errorf("live bytes after all released: %d, want %d", got, base)
	}
}

// Dawn reports the adapter's memory heaps; lavapipe's one heap is the
// machine's memory, which /proc/meminfo states too.
func TestAdapterMemoryIsTheMachinesOnCPU(t *testing.T) {
	info := testDevice.Info
	if info.Type != gpu.AdapterTypeCPU {
		t.Skipf("%s is not a CPU adapter: its memory is its own", info.Name())
	}
	raw, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Skip("no /proc/meminfo on this OS")
	}
	var kib uint64
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kib, _ = strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		}
	}
	if kib == 0 {
		t.Fatalf("no MemTotal in /proc/meminfo")
	}
	if got, want := info.MemoryBytes, 1024*kib; got != want {
		t.Errorf("adapter memory %d bytes, /proc/meminfo MemTotal %d", got, want)
	}
}

// SetAllocationLimit refuses a buffer that would take the live bytes above
// the limit with Dawn's out-of-memory error type, counts nothing for it, and
// creates buffers again once the limit is lifted.
func TestAllocationLimit(t *testing.T) {
	base := testDevice.LiveBytes()
	testDevice.SetAllocationLimit(base + 8192)
	defer testDevice.SetAllocationLimit(0)
	a, err := testDevice.NewBuffer(4096, "fits")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Release()
	_, err = testDevice.NewBuffer(8192, "too big")
	var gpuErr *gpu.Error
	if !errors.As(err, &gpuErr) || gpuErr.Type != "out-of-memory" || !strings.Contains(err.Error(), "too big") {
		t.Fatalf("over the limit: error %v, want an out-of-memory gpu.Error naming the buffer", err)
	}
	if got := testDevice.LiveBytes() - base; got != 4096 {
		t.Errorf("live bytes %d more after the refused buffer, want 4096", got)
	}
	testDevice.SetAllocationLimit(0)
	b, err := testDevice.NewBuffer(8192, "no limit")
	if err != nil {
		t.Fatalf("after lifting the limit: %v", err)
	}
	b.Release()
}
