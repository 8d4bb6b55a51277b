package model

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

func TestBias(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 42))
	for _, dtype := range []gpu.DType{gpu.F32, gpu.BF16} {
		for _, s := range activationTestShapes {
			y := gputest.RandFloats(rng, s.rows*s.cols)
			b := gputest.RandFloats(rng, s.cols)
			want := make([]float64, len(y))
			stored := storedAs(dtype, b)
			for i, v := range y {
				want[i] = float64(v) + float64(stored[i%s.cols])
			}
			yt := gputest.Upload(t, testDevice, gpu.F32, y, s.rows, s.cols)
			bt := gputest.Upload(t, testDevice, dtype, b, s.cols)
			rec := testDevice.NewRecorder()
			if err := addBias(rec, yt, bt, s.rows, s.cols, s.gridLimit); err != nil {
				t.Fatal(err)
			}
			gputest.Submit(t, rec)
			if e := gputest.RelL2(gputest.Download(t, yt), want); !(e < 1e-6) {
				t.Errorf("%s bias, %dx%d (grid limit %d): relative L2 error %g", dtype, s.rows, s.cols, s.gridLimit, e)
			}
			rec.Release()
			yt.Release()
			bt.Release()
		}
	}
}

func TestBiasErrors(t *testing.T) {
	y := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 12), 3, 4)
	defer y.Release()
	b := gputest.Upload(t, testDevice, gpu.BF16, make([]float32, 3), 3)
	defer b.Release()
	rec := testDevice.NewRecorder()
	defer rec.Release()
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"bias length", AddBias(rec, y, b, 3, 4), "b has shape [3]"},
		{"bf16 output", AddBias(rec, b, b, 1, 3), "y is bf16"},
		{"zero cols", AddBias(rec, y, b, 3, 0), "cols >= 1"},
	} {
		if c.err == nil {
			t.Errorf("%s: no error", c.name)
		} else if !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: error %q does not mention %q", c.name, c.err, c.want)
		}
	}
	if rec.Dispatches != 0 {
		t.Errorf("failed calls recorded %d dispatches", rec.Dispatches)
	}
}
