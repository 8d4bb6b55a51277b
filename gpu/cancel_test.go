package gpu_test

import (
	"context"
	"errors"
	"testing"

	"github.com/sparselora/sparselora/gpu"
)

// cancelled is a context that has already ended: a wait on it gives up before
// it ever polls the future, so the call is always still pending when abandoned
// (WaitAnyOnly callbacks fire only inside a wait on their future).
func cancelled() context.Context {
	c, cancel := context.WithCancel(context.Background())
	cancel()
	return c
}

// busyKernel keeps the GPU busy so that calls queued behind it stay pending: each
// invocation runs a dependent chain whose length comes from the buffer, so the
// compiler cannot fold it.
const busyKernel = `
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) {
  let n = arrayLength(&y);
  if (id.x + 1u >= n) { return; }
  let trips = u32(y[n - 1u]);
  var acc = y[id.x];
  for (var i = 0u; i < trips; i++) { acc = fma(acc, 0.999, 1.0); }
  y[id.x] = acc;
}`

// queueBusyWork submits busyKernel over 4096 invocations of trips iterations
// each and returns what the caller releases once the GPU is done with it.
func queueBusyWork(t *testing.T, dev *gpu.Device, trips int) (release func()) {
	t.Helper()
	const n = 4096
	buf, err := dev.NewBuffer(4*(n+1), "busy")
	if err != nil {
		t.Fatal(err)
	}
	init := make([]float32, n+1)
	init[n] = float32(trips)
	if err := buf.Write(0, gpu.F32Bytes(init)); err != nil {
		t.Fatal(err)
	}
	k, err := dev.CompileKernel("busy", busyKernel)
	if err != nil {
		t.Fatal(err)
	}
	rec := dev.NewRecorder()
	if err := rec.Dispatch(gpu.KindElementwise, k, nil, []gpu.Binding{gpu.Bind(buf)}, n/64, 1, 1); err != nil {
		t.Fatal(err)
	}
	if err := rec.Submit(); err != nil {
		t.Fatal(err)
	}
	return func() {
		rec.Release()
		k.Release()
		buf.Release()
	}
}

// A read or sync abandoned by its context must return the context's error and
// leave the device usable; the abandoned read's staging buffer stays alive until
// Dawn has fired its callback, and is freed by the next wait.
func TestCancelledReadAndSync(t *testing.T) {
	want := []float32{1, -2, 3.5, 4e-3}
	x, err := testDevice.NewTensor(gpu.F32, "cancelled read", len(want))
	if err != nil {
		t.Fatal(err)
	}
	defer x.Release()
	if err := x.Upload(want); err != nil {
		t.Fatal(err)
	}
	release := queueBusyWork(t, testDevice, 2000)
	defer release()
	base := testDevice.LiveObjects()

	if _, err := x.Download(cancelled()); !errors.Is(err, context.Canceled) {
		t.Fatalf("read with a cancelled context: got %v, want context.Canceled", err)
	}
	// The read's staging buffer, which Dawn may still write into, is kept.
	if got, want := testDevice.LiveObjects(), base+1; got != want {
		t.Errorf("%d live objects after the cancelled read, want %d (the staging buffer kept)", got, want)
	}
	if err := testDevice.Sync(cancelled()); !errors.Is(err, context.Canceled) {
		t.Fatalf("sync with a cancelled context: got %v, want context.Canceled", err)
	}
	if err := testDevice.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := x.Download(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("element %d after the cancelled read: got %v want %v", i, got[i], want[i])
		}
	}
	if got, want := testDevice.LiveObjects(), base; got != want {
		t.Errorf("%d live objects after later waits, want %d: the abandoned staging buffer was not freed", got, want)
	}
}

// Calls still pending when their device closes are drained by Close, which
// frees their state once Dawn has fired the callbacks (run with -asan to see a
// use-after-free if it freed them earlier).
func TestCloseDrainsCancelledCalls(t *testing.T) {
	in, err := gpu.NewInstance()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	dev, err := in.OpenDevice(gpu.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	buf, err := dev.NewBuffer(64, "pending read")
	if err != nil {
		t.Fatal(err)
	}
	release := queueBusyWork(t, dev, 2000)
	for range 3 {
		if _, err := buf.Read(cancelled(), 0, 64); !errors.Is(err, context.Canceled) {
			t.Fatalf("read with a cancelled context: got %v, want context.Canceled", err)
		}
		if err := dev.Sync(cancelled()); !errors.Is(err, context.Canceled) {
			t.Fatalf("sync with a cancelled context: got %v, want context.Canceled", err)
		}
	}
	release()
	buf.Release()
	// Later waits may have freed some, but the last read and sync were abandoned
	// with no wait since.
	if n := gpu.PendingCalls(in); n < 2 {
		t.Errorf("%d abandoned calls held before Close, want at least the last read and sync", n)
	}
	dev.Close()
	if live := dev.LiveObjects(); live != 0 {
		t.Errorf("%d live objects after Close, want 0", live)
	}
	if n := gpu.PendingCalls(in); n != 0 {
		t.Errorf("%d abandoned calls still held after the device closed, want 0", n)
	}
	in.Close()
}
