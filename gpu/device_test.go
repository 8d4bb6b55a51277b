package gpu_test

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

func TestTensorRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	data := gputest.RandFloats(rng, 1001)
	x := gputest.Upload(t, testDevice, gpu.F32, data, 7, 143)
	defer x.Release()
	for i, v := range gputest.Download(t, x) {
		if v != data[i] {
			t.Fatalf("f32 element %d: got %v want %v", i, v, data[i])
		}
	}
	// bf16: odd length, values that exercise rounding (ties to even) and specials.
	special := []float32{1, -2.5, 1.00390625 /* tie: rounds to 1 */, 1.01171875 /* tie: rounds up */, 3.0e38,
		float32(math.Inf(-1)), 0, float32(math.Copysign(0, -1)), 1e-40}
	data = append(special, gputest.RandFloats(rng, 100)...)
	y := gputest.Upload(t, testDevice, gpu.BF16, data, len(data))
	defer y.Release()
	got := gputest.Download(t, y)
	for i, v := range got {
		want := gpu.FromBF16(gpu.ToBF16(data[i]))
		if math.Float32bits(v) != math.Float32bits(want) {
			t.Fatalf("bf16 element %d: got %v want %v", i, v, want)
		}
		if normal := math.Abs(float64(data[i])) >= 0x1p-126; normal && !math.IsInf(float64(data[i]), 0) && math.Abs(float64(v-data[i])) > math.Abs(float64(data[i]))/256 {
			t.Fatalf("bf16 element %d: %v is not within bf16 precision of %v", i, v, data[i])
		}
	}
	if got[2] != 1 || got[3] != 1.015625 {
		t.Errorf("ties to even: got %v, %v", got[2], got[3])
	}
	if !math.IsNaN(float64(gpu.FromBF16(gpu.ToBF16(float32(math.NaN()))))) {
		t.Error("NaN did not survive bf16 conversion")
	}
	if err := y.Upload(make([]float32, 3)); err == nil {
		t.Error("uploading the wrong number of values succeeded")
	}
}

func TestCompileErrorsCarryTheCompilerMessage(t *testing.T) {
	_, err := testDevice.CompileKernel("broken", "@compute @workgroup_size(1)\nfn main() { let x: f32 = undefined_name; }")
	var werr *gpu.Error
	if !errors.As(err, &werr) || werr.Type != "validation" || !strings.Contains(err.Error(), "undefined_name") ||
		!strings.Contains(err.Error(), "2:") {
		t.Fatalf("want a validation error naming the identifier and line, got %v", err)
	}
	if _, err := testDevice.Kernel("no-such-file.wgsl"); err == nil {
		t.Fatal("a missing shader file compiled")
	}
}

func TestValidationErrorsSurfaceOnSubmit(t *testing.T) {
	// Binding one buffer as both A (read) and C (read_write) is a WebGPU
	// validation error: it must come back from Submit, not be lost.
	x := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 16), 4, 4)
	defer x.Release()
	rec := testDevice.NewRecorder()
	defer rec.Release()
	if err := gpu.Gemm(rec, gpu.GemmArgs{A: x, B: x, C: x, M: 4, N: 4, K: 4}); err != nil {
		t.Fatal(err)
	}
	err := rec.Submit()
	var werr *gpu.Error
	if !errors.As(err, &werr) {
		t.Fatalf("want a WebGPU error from Submit, got %v", err)
	}
	if err := testDevice.Err(); err != nil {
		t.Fatalf("the error was reported twice: %v", err)
	}
}

func TestBufferBoundsAreChecked(t *testing.T) {
	b, err := testDevice.NewBuffer(16, "small")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	if err := b.Write(8, make([]byte, 16)); err == nil {
		t.Error("write past the end succeeded")
	}
	if _, err := b.Read(ctx, 0, 32); err == nil {
		t.Error("read past the end succeeded")
	}
	if _, err := testDevice.NewBuffer(testDevice.Limits.MaxBufferSize+4, "huge"); err == nil {
		t.Error("a buffer over maxBufferSize was created")
	}
}
