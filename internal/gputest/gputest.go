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
	"github.com/sparselora/sparselora/model/safetensors"
)

// NoSubgroupsEnv names the environment variable that, set to 1, opens the
// tests' device without the subgroups feature (gpu.Options.NoSubgroups), so
// that the kernel tests cover the workgroup-tree reductions on an adapter that
// has subgroups too; `make test` runs the kernel packages both ways.
const NoSubgroupsEnv = "SPARSELORA_TEST_NO_SUBGROUPS"

// Options are the options of the tests' device: the default ones, with
// NoSubgroups where NoSubgroupsEnv asks for it.
func Options() (gpu.Options, error) {
	opts := gpu.DefaultOptions()
	switch v := os.Getenv(NoSubgroupsEnv); v {
	case "", "0":
	case "1":
		opts.NoSubgroups = true
	default:
		return opts, fmt.Errorf("%s=%q: want 1 (no subgroups) or 0", NoSubgroupsEnv, v)
	}
	return opts, nil
}

// TestOptions is Options for a test or benchmark that opens a device of its
// own, failing it on a bad NoSubgroupsEnv.
func TestOptions(tb testing.TB) gpu.Options {
	tb.Helper()
	opts, err := Options()
	if err != nil {
		tb.Fatal(err)
	}
	return opts
}

// Main opens the tests' device (see Options) into *dev, runs the tests and
// closes it; use it as
// `func TestMain(m *testing.M) { os.Exit(gputest.Main(m, &dev)) }`.
func Main(m *testing.M, dev **gpu.Device) int {
	opts, err := Options()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gpu tests:", err)
		return 1
	}
	in, err := gpu.NewInstance()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gpu tests:", err)
		return 1
	}
	defer in.Close()
	d, err := in.OpenDevice(opts)
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

// RandAffine returns a random quantized weight [out, in]: random codes, and
// scales and biases of both signs (negative scales occur in MLX checkpoints)
// rounded to the format's scale type.
func RandAffine(rng *rand.Rand, out, in int, f gpu.Affine) *gpu.AffineWeight {
	w := &gpu.AffineWeight{Out: out, In: in, Format: f,
		Codes:  make([]uint32, out*f.CodeWords(in)),
		Scales: make([]float32, out*in/f.Group), Biases: make([]float32, out*in/f.Group)}
	for i := range w.Codes {
		w.Codes[i] = rng.Uint32()
	}
	round := func(v float32) float32 {
		switch f.Scales {
		case gpu.ScaleBF16:
			return gpu.FromBF16(gpu.ToBF16(v))
		case gpu.ScaleF16:
			return safetensors.HalfToFloat32(safetensors.Float32ToHalf(v))
		}
		return v
	}
	step := 2 / float64(int(1)<<f.Bits) // codes span about [-1, 1]
	for i := range w.Scales {
		w.Scales[i] = round(float32(step * (0.5 + rng.Float64()) * float64(1-2*rng.IntN(2))))
		w.Biases[i] = round(float32(rng.NormFloat64()))
	}
	return w
}

// AffineFormats are the formats kernel tests cover: both bit widths, every
// group size, every scale type.
func AffineFormats() []gpu.Affine {
	var out []gpu.Affine
	for _, bits := range []int{4, 8} {
		for _, group := range []int{32, 64, 128} {
			for _, s := range []gpu.ScaleType{gpu.ScaleF32, gpu.ScaleBF16, gpu.ScaleF16} {
				out = append(out, gpu.Affine{Bits: bits, Group: group, Scales: s})
			}
		}
	}
	return out
}

// UploadAffine makes a quantized tensor holding w.
func UploadAffine(t testing.TB, dev *gpu.Device, w *gpu.AffineWeight) *gpu.Tensor {
	t.Helper()
	x, err := dev.NewAffineTensor(w, "test weight")
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// DequantizeF64 is w's weights s*q + b in float64, row-major [out, in]: the
// reference that kernels reading codes are checked against.
func DequantizeF64(w *gpu.AffineWeight) []float64 {
	out := make([]float64, w.Out*w.In)
	groups := w.In / w.Format.Group
	for r := 0; r < w.Out; r++ {
		for c := 0; c < w.In; c++ {
			g := r*groups + c/w.Format.Group
			out[r*w.In+c] = float64(w.Scales[g])*float64(w.Code(r, c)) + float64(w.Biases[g])
		}
	}
	return out
}
