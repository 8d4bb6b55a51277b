package gpu_test

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
)

// residentBytes reads the process's resident set size from /proc (Linux only).
func residentBytes(t *testing.T) int64 {
	raw, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Skip("no /proc/self/statm on this OS")
	}
	fields := strings.Fields(string(raw))
	pages, _ := strconv.ParseInt(fields[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

const lifetimeKernel = `
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) {
  if (id.x < arrayLength(&y)) { y[id.x] = y[id.x] + 1.0; }
}`

// One round creates a 256 KiB buffer and an uncached pipeline, runs the kernel on
// the buffer through a recorder, and frees everything.
func lifetimeRound(t *testing.T) {
	buf, err := testDevice.NewBuffer(256<<10, "lifetime")
	if err != nil {
		t.Fatal(err)
	}
	k, err := testDevice.CompileKernel("lifetime", lifetimeKernel)
	if err != nil {
		t.Fatal(err)
	}
	rec := testDevice.NewRecorder()
	if err := rec.Dispatch(gpu.KindElementwise, k, nil, []gpu.Binding{gpu.Bind(buf)}, 4, 1, 1); err != nil {
		t.Fatal(err)
	}
	if err := rec.Submit(); err != nil {
		t.Fatal(err)
	}
	rec.Release()
	k.Release()
	buf.Release()
}

func TestObjectsAreReleased(t *testing.T) {
	base := testDevice.LiveObjects()
	for range 100 { // warm up allocator pools and Dawn's caches
		lifetimeRound(t)
	}
	if err := testDevice.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	rss := residentBytes(t)
	for range 1000 {
		lifetimeRound(t)
	}
	if err := testDevice.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if live := testDevice.LiveObjects(); live != base {
		t.Errorf("%d objects still alive after 1100 create/free rounds (started with %d)", live, base)
	}
	// 1000 rounds allocate 250 MiB of buffers and 1000 pipelines; anything kept
	// would show up as hundreds of MiB.
	if grown := residentBytes(t) - rss; grown > 48<<20 {
		t.Errorf("resident memory grew by %d MiB over 1000 create/free rounds", grown>>20)
	}
}
