package model

import (
	"math/rand/v2"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// A weight too large for one storage binding is multiplied in row blocks; the
// result must not depend on the block size. Checked against float64 too.
func TestLinearRowBlocks(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	const tokens, in, out = 5, 12, 11
	for _, dtype := range []gpu.DType{gpu.F32, gpu.BF16} {
		wv := gputest.RandFloats(rng, out*in)
		if dtype == gpu.BF16 {
			for i, v := range wv {
				wv[i] = gpu.FromBF16(gpu.ToBF16(v))
			}
		}
		w := gputest.Upload(t, testDevice, dtype, wv, out, in)
		bias := gputest.Upload(t, testDevice, gpu.F32, gputest.RandFloats(rng, out), out)
		xv, dyv := gputest.RandFloats(rng, tokens*in), gputest.RandFloats(rng, tokens*out)
		x := gputest.Upload(t, testDevice, gpu.F32, xv, tokens, in)
		dy := gputest.Upload(t, testDevice, gpu.F32, dyv, tokens, out)
		bv := gputest.Download(t, bias)
		wantY := make([]float64, tokens*out)
		wantDX := make([]float64, tokens*in)
		for r := range tokens {
			for o := range out {
				s := float64(bv[o])
				for i := range in {
					s += float64(xv[r*in+i]) * float64(wv[o*in+i])
					wantDX[r*in+i] += float64(dyv[r*out+o]) * float64(wv[o*in+i])
				}
				wantY[r*out+o] = s
			}
		}
		l, err := NewLinear(testDevice, w, bias)
		if err != nil {
			t.Fatal(err)
		}
		for _, block := range []int{out, 4, 2, 1} { // bf16 needs even blocks except the whole
			if dtype == gpu.BF16 && block%2 == 1 && block != out {
				continue
			}
			l.BlockRows = block
			y, dx := gputest.Poisoned(t, testDevice, tokens, out), gputest.Poisoned(t, testDevice, tokens, in)
			rec := testDevice.NewRecorder()
			if err := l.Forward(rec, x, y, tokens, false); err != nil {
				t.Fatal(err)
			}
			if err := l.BackwardInput(rec, dy, dx, tokens, false); err != nil {
				t.Fatal(err)
			}
			gputest.Submit(t, rec)
			if e := gputest.RelL2(gputest.Download(t, y), wantY); !(e < 1e-5) {
				t.Errorf("%s, blocks of %d rows: forward error %g", dtype, block, e)
			}
			if e := gputest.RelL2(gputest.Download(t, dx), wantDX); !(e < 1e-5) {
				t.Errorf("%s, blocks of %d rows: backward error %g", dtype, block, e)
			}
			rec.Release()
			y.Release()
			dx.Release()
		}
		for _, tt := range []*gpu.Tensor{w, bias, x, dy} {
			tt.Release()
		}
	}
}
