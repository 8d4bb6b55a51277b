package model

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// TestLinearFewRows checks the matrix-vector path of a projection against
// float64, for f32 and bf16 weights, 1 to 4 rows, row blocks, overwriting and
// accumulating, with odd sizes so that neither the workgroup's split of the
// inputs nor its outputs come out even.
func TestLinearFewRows(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	const in, out = 133, 13
	for _, dtype := range []gpu.DType{gpu.F32, gpu.BF16} {
		wv := gputest.RandFloats(rng, out*in)
		if dtype == gpu.BF16 {
			for i, v := range wv {
				wv[i] = gpu.FromBF16(gpu.ToBF16(v))
			}
		}
		w := gputest.Upload(t, testDevice, dtype, wv, out, in)
		bv := gputest.RandFloats(rng, out)
		bias := gputest.Upload(t, testDevice, gpu.F32, bv, out)
		t.Cleanup(w.Release)
		t.Cleanup(bias.Release)
		l, err := NewLinear(testDevice, w, bias)
		if err != nil {
			t.Fatal(err)
		}
		for rows := 1; rows <= linearDecodeMaxRows; rows++ {
			for _, block := range []int{out, 6} {
				for _, accumulate := range []bool{false, true} {
					t.Run(fmt.Sprintf("%s %d rows blocks of %d accumulate=%v", dtype, rows, block, accumulate), func(t *testing.T) {
						l.BlockRows = block
						xv := gputest.RandFloats(rng, rows*in)
						y0 := gputest.RandFloats(rng, rows*out)
						x := gputest.Upload(t, testDevice, gpu.F32, xv, rows, in)
						var y *gpu.Tensor
						if accumulate {
							y = gputest.Upload(t, testDevice, gpu.F32, y0, rows, out)
						} else {
							y = gputest.Poisoned(t, testDevice, rows, out)
						}
						t.Cleanup(x.Release)
						t.Cleanup(y.Release)
						want := make([]float64, rows*out)
						for r := range rows {
							for o := range out {
								s := float64(bv[o])
								if accumulate {
									s += float64(y0[r*out+o])
								}
								for i := range in {
									s += float64(xv[r*in+i]) * float64(wv[o*in+i])
								}
								want[r*out+o] = s
							}
						}
						rec := testDevice.NewRecorder()
						defer rec.Release()
						var kernels []string
						rec.Log = func(d gpu.Dispatch) { kernels = append(kernels, d.Kernel) }
						if err := l.forwardFewRows(rec, x, y, rows, accumulate); err != nil {
							t.Fatal(err)
						}
						if !strings.Contains(kernels[0], linearDecodeShader) {
							t.Errorf("first dispatch ran %s, want %s", kernels[0], linearDecodeShader)
						}
						gputest.Submit(t, rec)
						if e := gputest.RelL2(gputest.Download(t, y), want); !(e < 1e-6) {
							t.Errorf("relative L2 error %g", e)
						}
					})
				}
			}
		}
	}
}

func TestMatVecRejectsInvalidArguments(t *testing.T) {
	x := gputest.Poisoned(t, testDevice, 5, 8)
	w := gputest.Poisoned(t, testDevice, 3, 8)
	y := gputest.Poisoned(t, testDevice, 5, 3)
	for _, tt := range []*gpu.Tensor{x, w, y} {
		t.Cleanup(tt.Release)
	}
	rec := testDevice.NewRecorder()
	defer rec.Release()
	if err := matVec(rec, x, w, y, 5, 3, 8, 3, 0); err == nil || !strings.Contains(err.Error(), "rows") {
		t.Errorf("5 rows: error %v, want one about rows", err)
	}
	if err := matVec(rec, rowsOf(x, 0, 2, 8), w, rowsOf(x, 2, 2, 8), 2, 3, 8, 3, 0); err == nil {
		t.Error("y of the wrong size inside x's buffer: no error")
	}
	if rec.Dispatches != 0 {
		t.Errorf("invalid calls recorded %d dispatches", rec.Dispatches)
	}
}

// TestLinearFewRowsAffine checks the matrix-vector kernel reading a quantized
// weight's codes against the float64 dequantized weight: every format (bit
// width, group size, scale type, negative scales), 1 to 4 rows, row blocks,
// overwriting and accumulating into a NaN-poisoned or random output.
func TestLinearFewRowsAffine(t *testing.T) {
	rng := rand.New(rand.NewPCG(33, 34))
	for i, f := range gputest.AffineFormats() {
		if (i/3+i)%3 != 0 { // each kernel compiles on its own: every (bits, group) pair, each scale type twice
			continue
		}
		in, out := f.Group*(1+i%3), 13+2*(i%4)
		rows, accumulate, block := 1+i%linearDecodeMaxRows, i%2 == 1, []int{out, 6}[i%2]
		t.Run(fmt.Sprintf("%s %d rows blocks of %d accumulate=%v", f, rows, block, accumulate), func(t *testing.T) {
			aw := gputest.RandAffine(rng, out, in, f)
			wv := gputest.DequantizeF64(aw)
			w := gputest.UploadAffine(t, testDevice, aw)
			t.Cleanup(w.Release)
			l, err := NewLinear(testDevice, w, nil)
			if err != nil {
				t.Fatal(err)
			}
			l.BlockRows = block
			xv := gputest.RandFloats(rng, rows*in)
			y0 := gputest.RandFloats(rng, rows*out)
			x := gputest.Upload(t, testDevice, gpu.F32, xv, rows, in)
			y := gputest.Poisoned(t, testDevice, rows, out)
			if accumulate {
				y = gputest.Upload(t, testDevice, gpu.F32, y0, rows, out)
			}
			t.Cleanup(x.Release)
			t.Cleanup(y.Release)
			want := make([]float64, rows*out)
			for r := range rows {
				for o := range out {
					s := 0.0
					if accumulate {
						s = float64(y0[r*out+o])
					}
					for k := range in {
						s += float64(xv[r*in+k]) * wv[o*in+k]
					}
					want[r*out+o] = s
				}
			}
			rec := testDevice.NewRecorder()
			defer rec.Release()
			if err := l.forwardFewRows(rec, x, y, rows, accumulate); err != nil {
				t.Fatal(err)
			}
			gputest.Submit(t, rec)
			if e := gputest.RelL2(gputest.Download(t, y), want); !(e < 1e-6) {
				t.Errorf("relative L2 error %g", e)
			}
		})
	}
}
