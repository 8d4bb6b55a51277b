package model

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// guarded uploads values between NaN guard elements and returns the view of
// the values and the whole tensor, so a test can check that nothing outside
// the view is written.
func guarded(t *testing.T, values []float32, shape ...int) (view, whole *gpu.Tensor) {
	t.Helper()
	const guard = 7
	all := make([]float32, guard+len(values)+guard)
	for i := range all {
		all[i] = float32(math.NaN())
	}
	copy(all[guard:], values)
	whole = gputest.Upload(t, testDevice, gpu.F32, all, len(all))
	view, err := whole.Sub(guard, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return view, whole
}

func checkGuards(t *testing.T, what string, whole *gpu.Tensor, n int) {
	t.Helper()
	got := gputest.Download(t, whole)
	for i, v := range got {
		if (i < 7 || i >= 7+n) && !math.IsNaN(float64(v)) {
			t.Fatalf("%s: element %d outside the output was written (%g)", what, i, v)
		}
	}
}

func TestRMSNormWeightGradAndBiasGrad(t *testing.T) {
	for _, c := range []struct{ rows, cols int }{{1, 1}, {7, 13}, {129, 65}, {3, 300}} {
		rng := rand.New(rand.NewPCG(uint64(c.rows), uint64(c.cols)))
		dy := gputest.RandFloats(rng, c.rows*c.cols)
		x := gputest.RandFloats(rng, c.rows*c.cols)
		rstd := gputest.RandFloats(rng, c.rows)
		dw0 := gputest.RandFloats(rng, c.cols)
		dyT := gputest.Upload(t, testDevice, gpu.F32, dy, c.rows, c.cols)
		xT := gputest.Upload(t, testDevice, gpu.F32, x, c.rows, c.cols)
		rstdT := gputest.Upload(t, testDevice, gpu.F32, rstd, c.rows)
		dw, dwWhole := guarded(t, dw0, c.cols)
		db, dbWhole := guarded(t, dw0, c.cols)
		rec := testDevice.NewRecorder()
		if err := RMSNormWeightGrad(rec, dw, dyT, xT, rstdT, c.rows, c.cols); err != nil {
			t.Fatal(err)
		}
		if err := BiasGrad(rec, db, dyT, c.rows, c.cols); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		rec.Release()
		wantW, wantB := make([]float64, c.cols), make([]float64, c.cols)
		for j := range c.cols {
			wantW[j], wantB[j] = float64(dw0[j]), float64(dw0[j])
			for r := range c.rows {
				d := float64(dy[r*c.cols+j])
				wantW[j] += d * float64(x[r*c.cols+j]) * float64(rstd[r])
				wantB[j] += d
			}
		}
		if e := gputest.RelL2(gputest.Download(t, dw), wantW); !(e < 1e-5) {
			t.Errorf("%dx%d: RMSNorm weight gradient relative error %g", c.rows, c.cols, e)
		}
		if e := gputest.RelL2(gputest.Download(t, db), wantB); !(e < 1e-5) {
			t.Errorf("%dx%d: bias gradient relative error %g", c.rows, c.cols, e)
		}
		checkGuards(t, "RMSNormWeightGrad", dwWhole, c.cols)
		checkGuards(t, "BiasGrad", dbWhole, c.cols)
		for _, tt := range []*gpu.Tensor{dyT, xT, rstdT, dwWhole, dbWhole} {
			tt.Release()
		}
	}
}

func TestEmbeddingBackward(t *testing.T) {
	for _, c := range []struct{ vocab, tokens, cols int }{{1, 1, 1}, {11, 37, 13}, {300, 129, 5}} {
		rng := rand.New(rand.NewPCG(uint64(c.vocab), uint64(c.tokens)))
		dx := gputest.RandFloats(rng, c.tokens*c.cols)
		ids, mask := make([]uint32, c.tokens), make([]uint32, c.tokens)
		for i := range ids {
			ids[i] = uint32(rng.IntN(c.vocab))
			if rng.IntN(5) > 0 {
				mask[i] = 1
			}
		}
		d0 := gputest.RandFloats(rng, c.vocab*c.cols)
		dxT := gputest.Upload(t, testDevice, gpu.F32, dx, c.tokens, c.cols)
		idsT, err := testDevice.NewTensor(gpu.F32, "ids", c.tokens)
		if err != nil {
			t.Fatal(err)
		}
		maskT, err := testDevice.NewTensor(gpu.F32, "mask", c.tokens)
		if err != nil {
			t.Fatal(err)
		}
		if err := idsT.Buf.Write(0, gpu.U32Bytes(ids)); err != nil {
			t.Fatal(err)
		}
		if err := maskT.Buf.Write(0, gpu.U32Bytes(mask)); err != nil {
			t.Fatal(err)
		}
		dTable, whole := guarded(t, d0, c.vocab, c.cols)
		rec := testDevice.NewRecorder()
		if err := EmbeddingBackward(rec, dTable, dxT, idsT, maskT, c.tokens, c.cols); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		rec.Release()
		want := make([]float64, c.vocab*c.cols)
		for i, v := range d0 {
			want[i] = float64(v)
		}
		for tok, id := range ids {
			if mask[tok] == 0 {
				continue
			}
			for j := range c.cols {
				want[int(id)*c.cols+j] += float64(dx[tok*c.cols+j])
			}
		}
		if e := gputest.RelL2(gputest.Download(t, dTable), want); !(e < 1e-5) {
			t.Errorf("vocab %d, %d tokens: embedding gradient relative error %g", c.vocab, c.tokens, e)
		}
		checkGuards(t, "EmbeddingBackward", whole, c.vocab*c.cols)
		for _, tt := range []*gpu.Tensor{dxT, idsT, maskT, whole} {
			tt.Release()
		}
	}
}
