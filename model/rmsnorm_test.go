package model

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// Shapes of the activation kernel tests: a single element, odd sizes that fill
// neither a workgroup nor a row of the tree reduction, rows longer than a
// workgroup, and a 2-D grid forced by a small workgroup limit.
var activationTestShapes = []struct {
	rows, cols int
	gridLimit  uint32 // 0: the device's
}{
	{1, 1, 0}, {7, 13, 0}, {129, 65, 0}, {3, 5000, 0}, {13, 300, 4},
}

// storedAs is what the kernel sees of values uploaded as dtype: bf16 rounds
// them (round to nearest even), f32 keeps them.
func storedAs(dtype gpu.DType, v []float32) []float32 {
	if dtype != gpu.BF16 {
		return v
	}
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = gpu.FromBF16(gpu.ToBF16(x))
	}
	return out
}

// normWeights are RMSNorm weights near 1, as trained norms are.
func normWeights(rng *rand.Rand, n int) []float32 {
	w := make([]float32, n)
	for i := range w {
		w[i] = float32(1 + 0.2*rng.NormFloat64())
	}
	return w
}

// referenceRMSNorm returns y = x * rstd * w and rstd per row, in float64.
func referenceRMSNorm(x, w []float32, rows, cols int, eps float64) (y, rstd []float64) {
	y = make([]float64, rows*cols)
	rstd = make([]float64, rows)
	for r := range rows {
		row := x[r*cols : (r+1)*cols]
		var sum float64
		for _, v := range row {
			sum += float64(v) * float64(v)
		}
		rstd[r] = 1 / math.Sqrt(sum/float64(cols)+eps)
		for c, v := range row {
			y[r*cols+c] = float64(v) * rstd[r] * float64(w[c])
		}
	}
	return y, rstd
}

// referenceRMSNormBackward returns the input gradient of referenceRMSNorm:
// dx = rstd * (w*dy - x * rstd^2 * mean(w*dy*x)) per row.
func referenceRMSNormBackward(x, w, dy []float64, rows, cols int, eps float64) []float64 {
	dx := make([]float64, rows*cols)
	for r := range rows {
		var sumSquares, dot float64
		for c := range cols {
			v := x[r*cols+c]
			sumSquares += v * v
			dot += w[c] * dy[r*cols+c] * v
		}
		rstd := 1 / math.Sqrt(sumSquares/float64(cols)+eps)
		for c := range cols {
			i := r*cols + c
			dx[i] = rstd * (w[c]*dy[i] - x[i]*rstd*rstd*dot/float64(cols))
		}
	}
	return dx
}

// relL2Scaled is ||got - want|| / max(||want||, ||scale||): the relative error
// where want is the difference of terms of size scale and so may be far smaller
// than the rounding of f32 arithmetic on those terms.
func relL2Scaled(got []float32, want, scale []float64) float64 {
	if len(got) != len(want) || len(scale) != len(want) {
		return math.Inf(1)
	}
	var diff, wantNorm, scaleNorm float64
	for i := range want {
		d := float64(got[i]) - want[i]
		diff += d * d
		wantNorm += want[i] * want[i]
		scaleNorm += scale[i] * scale[i]
	}
	if math.IsNaN(diff) {
		return math.Inf(1)
	}
	return math.Sqrt(diff / max(wantNorm, scaleNorm))
}

func widen(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

func TestRMSNormForward(t *testing.T) {
	const eps = 1e-5
	rng := rand.New(rand.NewPCG(1, 2))
	for _, dtype := range []gpu.DType{gpu.F32, gpu.BF16} {
		for _, s := range activationTestShapes {
			x := gputest.RandFloats(rng, s.rows*s.cols)
			w := normWeights(rng, s.cols)
			xt := gputest.Upload(t, testDevice, gpu.F32, x, s.rows, s.cols)
			wt := gputest.Upload(t, testDevice, dtype, w, s.cols)
			y := gputest.Poisoned(t, testDevice, s.rows, s.cols)
			rstd := gputest.Poisoned(t, testDevice, s.rows)
			rec := testDevice.NewRecorder()
			if err := rmsNormForward(rec, xt, wt, y, rstd, s.rows, s.cols, eps, s.gridLimit); err != nil {
				t.Fatal(err)
			}
			gputest.Submit(t, rec)
			wantY, wantRstd := referenceRMSNorm(x, storedAs(dtype, w), s.rows, s.cols, eps)
			if e := gputest.RelL2(gputest.Download(t, y), wantY); !(e < 1e-5) {
				t.Errorf("%s weight, %dx%d (grid limit %d): y relative L2 error %g", dtype, s.rows, s.cols, s.gridLimit, e)
			}
			if e := gputest.RelL2(gputest.Download(t, rstd), wantRstd); !(e < 1e-5) {
				t.Errorf("%s weight, %dx%d: rstd relative L2 error %g", dtype, s.rows, s.cols, e)
			}
			rec.Release()
			for _, tensor := range []*gpu.Tensor{xt, wt, y, rstd} {
				tensor.Release()
			}
		}
	}
}

func TestRMSNormBackward(t *testing.T) {
	const eps = 1e-6
	rng := rand.New(rand.NewPCG(3, 4))
	for _, dtype := range []gpu.DType{gpu.F32, gpu.BF16} {
		for _, accumulate := range []bool{false, true} {
			for _, s := range activationTestShapes {
				n := s.rows * s.cols
				x := gputest.RandFloats(rng, n)
				w := normWeights(rng, s.cols)
				dy := gputest.RandFloats(rng, n)
				_, rstdValues := referenceRMSNorm(x, w, s.rows, s.cols, eps)
				rstd32 := make([]float32, s.rows)
				for i, v := range rstdValues {
					rstd32[i] = float32(v)
				}
				want := referenceRMSNormBackward(widen(x), widen(storedAs(dtype, w)), widen(dy), s.rows, s.cols, eps)
				var dx *gpu.Tensor
				if accumulate {
					old := gputest.RandFloats(rng, n)
					for i := range want {
						want[i] += float64(old[i])
					}
					dx = gputest.Upload(t, testDevice, gpu.F32, old, s.rows, s.cols)
				} else {
					dx = gputest.Poisoned(t, testDevice, s.rows, s.cols)
				}
				xt := gputest.Upload(t, testDevice, gpu.F32, x, s.rows, s.cols)
				wt := gputest.Upload(t, testDevice, dtype, w, s.cols)
				rstd := gputest.Upload(t, testDevice, gpu.F32, rstd32, s.rows)
				dyt := gputest.Upload(t, testDevice, gpu.F32, dy, s.rows, s.cols)
				rec := testDevice.NewRecorder()
				if err := rmsNormBackward(rec, xt, wt, rstd, dyt, dx, s.rows, s.cols, accumulate, s.gridLimit); err != nil {
					t.Fatal(err)
				}
				gputest.Submit(t, rec)
				// With one column the two terms of dx cancel to about eps/x^2 of
				// either, so f32 rounding is measured against the terms' size.
				scale := make([]float64, n)
				wStored := storedAs(dtype, w)
				for i := range scale {
					scale[i] = rstdValues[i/s.cols] * float64(wStored[i%s.cols]) * float64(dy[i])
				}
				if e := relL2Scaled(gputest.Download(t, dx), want, scale); !(e < 1e-5) {
					t.Errorf("%s weight, accumulate %v, %dx%d (grid limit %d): dx relative L2 error %g",
						dtype, accumulate, s.rows, s.cols, s.gridLimit, e)
				}
				rec.Release()
				for _, tensor := range []*gpu.Tensor{xt, wt, rstd, dyt, dx} {
					tensor.Release()
				}
			}
		}
	}
}

// TestRMSNormReferenceGradient checks the float64 reference gradient against
// central differences of the float64 forward, for the loss sum(dy * y(x)).
func TestRMSNormReferenceGradient(t *testing.T) {
	const rows, cols, eps, h = 3, 7, 1e-5, 1e-6
	rng := rand.New(rand.NewPCG(5, 6))
	x := widen(gputest.RandFloats(rng, rows*cols))
	w := widen(normWeights(rng, cols))
	dy := widen(gputest.RandFloats(rng, rows*cols))
	loss := func(x []float64) float64 {
		var sum float64
		for r := range rows {
			var squares float64
			for c := range cols {
				squares += x[r*cols+c] * x[r*cols+c]
			}
			rstd := 1 / math.Sqrt(squares/cols+eps)
			for c := range cols {
				sum += dy[r*cols+c] * x[r*cols+c] * rstd * w[c]
			}
		}
		return sum
	}
	got := referenceRMSNormBackward(x, w, dy, rows, cols, eps)
	numeric := make([]float64, len(x))
	for i := range x {
		saved := x[i]
		x[i] = saved + h
		up := loss(x)
		x[i] = saved - h
		down := loss(x)
		x[i] = saved
		numeric[i] = (up - down) / (2 * h)
	}
	got32 := make([]float32, len(got))
	for i, v := range got {
		got32[i] = float32(v)
	}
	if e := gputest.RelL2(got32, numeric); !(e < 1e-6) {
		t.Errorf("reference gradient differs from central differences: relative L2 error %g", e)
	}
}

// TestRMSNormSharedBuffer runs forward and backward on views of one buffer at
// offsets that are not binding-aligned, so the kernels must honour the bases.
func TestRMSNormSharedBuffer(t *testing.T) {
	const rows, cols, eps = 5, 11, 1e-5
	rng := rand.New(rand.NewPCG(7, 8))
	align := uint64(max(testDevice.Limits.MinStorageBufferOffsetAlignment, 4))
	// Each tensor starts 4 bytes past an alignment boundary and is followed by a
	// gap, so the aligned bindings of neighbours do not overlap.
	stride := (uint64(4*rows*cols)/align + 2) * align
	buf, err := testDevice.NewBuffer(6*stride, "shared activations")
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Release()
	view := func(slot int, shape ...int) *gpu.Tensor {
		return &gpu.Tensor{Buf: buf, Offset: uint64(slot)*stride + 4, Shape: shape, DType: gpu.F32}
	}
	x, y, rstd, dy, dx := view(0, rows, cols), view(1, rows, cols), view(2, rows), view(3, rows, cols), view(4, rows, cols)
	xv, dyv := gputest.RandFloats(rng, rows*cols), gputest.RandFloats(rng, rows*cols)
	w := normWeights(rng, cols)
	wt := gputest.Upload(t, testDevice, gpu.F32, w, cols)
	defer wt.Release()
	nan := make([]float32, rows*cols)
	for i := range nan {
		nan[i] = float32(math.NaN())
	}
	for _, up := range []struct {
		t    *gpu.Tensor
		data []float32
	}{{x, xv}, {dy, dyv}, {y, nan}, {dx, nan}, {rstd, nan[:rows]}} {
		if err := up.t.Upload(up.data); err != nil {
			t.Fatal(err)
		}
	}
	rec := testDevice.NewRecorder()
	defer rec.Release()
	if err := RMSNormForward(rec, x, wt, y, rstd, rows, cols, eps); err != nil {
		t.Fatal(err)
	}
	if err := RMSNormBackward(rec, x, wt, rstd, dy, dx, rows, cols, false); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)
	wantY, _ := referenceRMSNorm(xv, w, rows, cols, eps)
	wantDx := referenceRMSNormBackward(widen(xv), widen(w), widen(dyv), rows, cols, eps)
	if e := gputest.RelL2(gputest.Download(t, y), wantY); !(e < 1e-5) {
		t.Errorf("y relative L2 error %g", e)
	}
	if e := gputest.RelL2(gputest.Download(t, dx), wantDx); !(e < 1e-5) {
		t.Errorf("dx relative L2 error %g", e)
	}
}

func TestRMSNormErrors(t *testing.T) {
	const rows, cols = 4, 6
	x := gputest.Upload(t, testDevice, gpu.F32, make([]float32, rows*cols), rows, cols)
	defer x.Release()
	y := gputest.Upload(t, testDevice, gpu.F32, make([]float32, rows*cols), rows, cols)
	defer y.Release()
	rstd := gputest.Upload(t, testDevice, gpu.F32, make([]float32, rows), rows)
	defer rstd.Release()
	w := gputest.Upload(t, testDevice, gpu.F32, make([]float32, cols), cols)
	defer w.Release()
	wrongW := gputest.Upload(t, testDevice, gpu.F32, make([]float32, cols+1), cols+1)
	defer wrongW.Release()
	bf16X := gputest.Upload(t, testDevice, gpu.BF16, make([]float32, rows*cols), rows, cols)
	defer bf16X.Release()
	// Two rows of x's buffer overlapping, and w inside an activation buffer.
	pair := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 2*rows*cols), 2*rows*cols)
	defer pair.Release()
	first := &gpu.Tensor{Buf: pair.Buf, Offset: 0, Shape: []int{rows, cols}, DType: gpu.F32}
	overlapping := &gpu.Tensor{Buf: pair.Buf, Offset: 8, Shape: []int{rows, cols}, DType: gpu.F32}
	weightInX := &gpu.Tensor{Buf: x.Buf, Offset: 0, Shape: []int{cols}, DType: gpu.F32}
	rec := testDevice.NewRecorder()
	defer rec.Release()

	cases := []struct {
		name string
		err  error
		want string
	}{
		{"nil recorder", RMSNormForward(nil, x, w, y, rstd, rows, cols, 1e-5), "nil recorder"},
		{"nil x", RMSNormForward(rec, nil, w, y, rstd, rows, cols, 1e-5), "x is nil"},
		{"wrong weight length", RMSNormForward(rec, x, wrongW, y, rstd, rows, cols, 1e-5), "w has shape [7]"},
		{"bf16 activation", RMSNormForward(rec, bf16X, w, y, rstd, rows, cols, 1e-5), "x is bf16, want f32"},
		{"rstd size", RMSNormForward(rec, x, w, y, y, rows, cols, 1e-5), "rstd has shape"},
		{"zero cols", RMSNormForward(rec, x, w, y, rstd, rows*cols, 0, 1e-5), "want rows >= 0 and cols >= 1"},
		{"NaN eps", RMSNormForward(rec, x, w, y, rstd, rows, cols, float32(math.NaN())), "eps"},
		{"overlapping output", RMSNormForward(rec, first, w, overlapping, rstd, rows, cols, 1e-5), "overlap"},
		{"weight in activation buffer", RMSNormBackward(rec, x, weightInX, rstd, y, y, rows, cols, false), "read-only"},
		{"dx aliases dy", RMSNormBackward(rec, x, w, rstd, y, y, rows, cols, true), "overlap"},
	}
	for _, c := range cases {
		if c.err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: error %q does not mention %q", c.name, c.err, c.want)
		}
	}
	if rec.Dispatches != 0 {
		t.Errorf("failed calls recorded %d dispatches", rec.Dispatches)
	}
}
