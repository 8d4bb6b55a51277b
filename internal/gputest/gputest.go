// Package gputest has the helpers that kernel tests outside package gpu share:
// one device per test binary, random inputs, NaN-poisoned outputs, and the
// relative L2 error against a float64 reference.
package gputest

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/sparselora/sparselora/gpu"
)

// Main opens the default device into *dev, runs the tests and closes it; use it
// as `func TestMain(m *testing.M) { os.Exit(gputest.Main(m, &dev)) }`.
func Main(m *testing.M, dev **gpu.Device) int {
	in, err := gpu.NewInstance()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gpu tests:", err)
		return 1
	}
	defer in.Close()
	d, err := in.OpenDevice(gpu.DefaultOptions())
	if err != nil {
		fmt.Fprintln(os.Stderr, "gpu tests:", err)
		return 1
	}
	defer d.Close()
	*dev = d
	return m.Run()
}

// RandFloats returns n standard-normal values.
func RandFloats(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

// RelL2 is ||got - want|| / ||want|| in float64 (absolute when want is zero).
func RelL2(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range want {
		d := float64(got[i]) - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// Upload makes a tensor of the given dtype holding data.
func Upload(t testing.TB, dev *gpu.Device, dtype gpu.DType, data []float32, shape ...int) *gpu.Tensor {
	t.Helper()
	x, err := dev.NewTensor(dtype, "test input", shape...)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Upload(data); err != nil {
		t.Fatal(err)
	}
	return x
}

// Poisoned makes an f32 tensor filled with NaN, so that any element a kernel
// fails to write shows up in the comparison.
func Poisoned(t testing.TB, dev *gpu.Device, shape ...int) *gpu.Tensor {
	t.Helper()
	n := 1
	for _, s := range shape {
		n *= s
	}
	nan := make([]float32, n)
	for i := range nan {
		nan[i] = float32(math.NaN())
	}
	return Upload(t, dev, gpu.F32, nan, shape...)
}

// Download reads a tensor back.
func Download(t testing.TB, x *gpu.Tensor) []float32 {
	t.Helper()
	v, err := x.Download(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Submit submits rec and fails the test on a WebGPU error.
func Submit(t testing.TB, rec *gpu.Recorder) {
	t.Helper()
	if err := rec.Submit(); err != nil {
		t.Fatal(err)
	}
}

// Float64s widens v for comparison against a float64 reference.
func Float64s(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// NaNs returns n NaNs: poison around and inside outputs that a kernel must
// write (or must not touch).
func NaNs(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(math.NaN())
	}
	return v
}
