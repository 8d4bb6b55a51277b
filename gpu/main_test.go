package gpu

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"testing"
)

// testDevice is shared by the package's tests: creating a device on lavapipe
// takes a noticeable fraction of a second.
var testDevice *Device

func TestMain(m *testing.M) {
	in, err := NewInstance()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gpu tests:", err)
		os.Exit(1)
	}
	testDevice, err = in.OpenDevice(DefaultOptions())
	if err != nil {
		fmt.Fprintln(os.Stderr, "gpu tests:", err)
		os.Exit(1)
	}
	code := m.Run()
	testDevice.Close()
	in.Close()
	os.Exit(code)
}

var ctx = context.Background()

func randFloats(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

// relL2 is ||got - want|| / ||want|| in float64 (absolute when want is zero).
func relL2(got []float32, want []float64) float64 {
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

// poisoned makes a tensor filled with NaN so that any element a kernel fails to
// write shows up in the comparison.
func poisoned(t *testing.T, label string, shape ...int) *Tensor {
	t.Helper()
	x, err := testDevice.NewTensor(F32, label, shape...)
	if err != nil {
		t.Fatal(err)
	}
	nan := make([]float32, x.Len())
	for i := range nan {
		nan[i] = float32(math.NaN())
	}
	if err := x.Upload(nan); err != nil {
		t.Fatal(err)
	}
	return x
}

// upload makes an f32 (or bf16) tensor holding data.
func upload(t *testing.T, dtype DType, data []float32, shape ...int) *Tensor {
	t.Helper()
	x, err := testDevice.NewTensor(dtype, "input", shape...)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Upload(data); err != nil {
		t.Fatal(err)
	}
	return x
}

func download(t *testing.T, x *Tensor) []float32 {
	t.Helper()
	v, err := x.Download(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
