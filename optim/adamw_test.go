package optim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// adamwReference is torch.optim.AdamW (single-tensor path) after
// torch.nn.utils.clip_grad_norm_, in float64.
type adamwReference struct {
	cfg     AdamWConfig
	p, m, v [][]float64
	steps   int
}

// step applies one clipped AdamW step and returns the total norm and the clip
// coefficient.
func (r *adamwReference) step(grads [][]float32, lr float64) (norm, clip float64) {
	for _, g := range grads {
		for _, x := range g {
			norm += float64(x) * float64(x)
		}
	}
	norm = math.Sqrt(norm)
	clip = 1
	if r.cfg.MaxGradNorm > 0 {
		clip = min(1, r.cfg.MaxGradNorm/(norm+1e-6))
	}
	r.steps++
	t := float64(r.steps)
	b1, b2 := r.cfg.Beta1, r.cfg.Beta2
	stepSize := lr / (1 - math.Pow(b1, t))
	bc2Sqrt := math.Sqrt(1 - math.Pow(b2, t))
	for k, g := range grads {
		for i, x := range g {
			gi := clip * float64(x)
			r.p[k][i] *= 1 - lr*r.cfg.WeightDecay
			r.m[k][i] = b1*r.m[k][i] + (1-b1)*gi
			r.v[k][i] = b2*r.v[k][i] + (1-b2)*gi*gi
			r.p[k][i] -= stepSize * r.m[k][i] / (math.Sqrt(r.v[k][i])/bc2Sqrt + r.cfg.Eps)
		}
	}
	return norm, clip
}

// TestAdamW runs three steps on tensors of odd sizes (one at a non-zero offset
// in a shared buffer) against the float64 reference, with clipping inactive,
// active and off. The learning rate changes between steps so that a rate
// baked in at the wrong step would show.
func TestAdamW(t *testing.T) {
	for _, c := range []struct {
		name    string
		maxNorm float64
		clips   bool
	}{
		{"clip inactive", 1e4, false},
		{"clip active", 0.5, true},
		{"clip off", 0, false},
	} {
		t.Run(c.name, func(t *testing.T) { testAdamW(t, c.maxNorm, c.clips) })
	}
}

func testAdamW(t *testing.T, maxNorm float64, wantClipping bool) {
	rng := rand.New(rand.NewPCG(21, 22))
	cfg := DefaultAdamWConfig()
	cfg.WeightDecay = 0.01
	cfg.MaxGradNorm = maxNorm
	sizes := [][]int{{7, 13}, {11, 3}, {5000}}

	// Values of the last parameter sit at an offset inside a larger buffer, as a
	// parameter packed with others would, to exercise the binding bases.
	const packedOffset = 37
	ref := adamwReference{cfg: cfg}
	var initial [][]float64
	var params []Param
	for k, shape := range sizes {
		n := 1
		for _, s := range shape {
			n *= s
		}
		values := gputest.RandFloats(rng, n)
		ref.p = append(ref.p, gputest.Float64s(values))
		initial = append(initial, gputest.Float64s(values))
		ref.m = append(ref.m, make([]float64, n))
		ref.v = append(ref.v, make([]float64, n))
		var value *gpu.Tensor
		if k == len(sizes)-1 {
			buf := gputest.Upload(t, testDevice, gpu.F32, append(gputest.NaNs(packedOffset), append(values, gputest.NaNs(3)...)...), packedOffset+n+3)
			defer buf.Release()
			value = &gpu.Tensor{Buf: buf.Buf, Offset: 4 * packedOffset, Shape: shape, DType: gpu.F32}
		} else {
			value = gputest.Upload(t, testDevice, gpu.F32, values, shape...)
			defer value.Release()
		}
		grad, err := testDevice.NewTensor(gpu.F32, "test grad", shape...)
		if err != nil {
			t.Fatal(err)
		}
		defer grad.Release()
		params = append(params, Param{Name: fmt.Sprintf("p%d", k), Value: value, Grad: grad})
	}
	opt, err := NewOptimizer(testDevice, params, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer opt.Release()

	rec := testDevice.NewRecorder()
	defer rec.Release()
	var norm, clip float64
	for step, lr := range []float64{1e-3, 5e-4, 1e-3} {
		grads := make([][]float32, len(params))
		for k, p := range params {
			// Scaled so that the gradients differ in size across tensors.
			grads[k] = gputest.RandFloats(rng, p.Grad.Len())
			for i := range grads[k] {
				grads[k][i] *= float32(k + 1)
			}
			if err := p.Grad.Upload(grads[k]); err != nil {
				t.Fatal(err)
			}
		}
		if err := opt.Step(rec, lr); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		norm, clip = ref.step(grads, lr)
		if opt.Steps() != step+1 {
			t.Fatalf("Steps() = %d after %d steps", opt.Steps(), step+1)
		}
		for k, p := range params {
			if got := gputest.Download(t, p.Grad); gputest.RelL2(got, gputest.Float64s(grads[k])) != 0 {
				t.Fatalf("step %d changed the gradient of %s", step+1, p.Name)
			}
		}
	}
	if wantClipping != (clip < 1) {
		t.Fatalf("test setup: clip coefficient %g with max norm %g (norm %g)", clip, maxNorm, norm)
	}

	gotNorm := gputest.Download(t, opt.GradNorm())
	gotClip := gputest.Download(t, opt.ClipCoef())
	if e := gputest.RelL2(gotNorm, []float64{norm}); !(e < 1e-6) {
		t.Errorf("gradient norm %g, want %g (relative error %g)", gotNorm[0], norm, e)
	}
	if e := gputest.RelL2(gotClip, []float64{clip}); !(e < 1e-6) {
		t.Errorf("clip coefficient %g, want %g (relative error %g)", gotClip[0], clip, e)
	}
	for k, p := range params {
		got := gputest.Download(t, p.Value)
		e := gputest.RelL2(got, ref.p[k])
		if !(e < 1e-6) {
			t.Errorf("%s: relative L2 error %g", p.Name, e)
		}
		t.Logf("%s: relative L2 error %.2g", p.Name, e)
		m, v, err := opt.Moments(k)
		if err != nil {
			t.Fatal(err)
		}
		if e := gputest.RelL2(gputest.Download(t, m), ref.m[k]); !(e < 1e-6) {
			t.Errorf("%s: first moment relative L2 error %g", p.Name, e)
		}
		if e := gputest.RelL2(gputest.Download(t, v), ref.v[k]); !(e < 1e-6) {
			t.Errorf("%s: second moment relative L2 error %g", p.Name, e)
		}
	}
	// The parameters hardly move in three steps, so compare the movement too:
	// an error in the update could hide below the tolerance on the values.
	for k, p := range params {
		got := gputest.Download(t, p.Value)
		moved := make([]float32, len(got))
		want := make([]float64, len(got))
		for i := range got {
			moved[i] = float32(float64(got[i]) - initial[k][i])
			want[i] = ref.p[k][i] - initial[k][i]
		}
		e := gputest.RelL2(moved, want)
		if !(e < 1e-3) {
			t.Errorf("%s: update relative L2 error %g", p.Name, e)
		}
		t.Logf("%s: update relative L2 error %.2g", p.Name, e)
	}
	packed := params[len(params)-1].Value
	around := gputest.Download(t, &gpu.Tensor{Buf: packed.Buf, Shape: []int{int(packed.Buf.Size() / 4)}, DType: gpu.F32})
	n := packed.Len()
	for i, v := range append(around[:packedOffset:packedOffset], around[packedOffset+n:]...) {
		if !math.IsNaN(float64(v)) {
			t.Fatalf("element %d beside the packed parameter was overwritten with %g", i, v)
		}
	}
}

// TestReductionCols checks the row length chosen for the norm reduction: the
// longest divisor within the cap (8194 = 2*17*241 has 482; a prime has 1).
func TestReductionCols(t *testing.T) {
	for n, want := range map[int]int{1: 1, 39: 39, 4096: 4096, 65536: 4096, 3 * 4096: 4096, 2 * 17 * 241: 2 * 241, 10007: 1} {
		if got := reductionCols(n); got != want {
			t.Errorf("reductionCols(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestNewOptimizerRejects(t *testing.T) {
	newTensor := func(n int) *gpu.Tensor {
		x, err := testDevice.NewTensor(gpu.F32, "test", n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(x.Release)
		return x
	}
	value, grad, short := newTensor(6), newTensor(6), newTensor(5)
	shared := &gpu.Tensor{Buf: value.Buf, Shape: []int{3}, DType: gpu.F32}
	good := []Param{{Name: "w", Value: value, Grad: grad}}
	badConfig := DefaultAdamWConfig()
	badConfig.Beta2 = 1
	for name, c := range map[string]struct {
		params []Param
		cfg    AdamWConfig
	}{
		"no parameters":          {nil, DefaultAdamWConfig()},
		"missing gradient":       {[]Param{{Name: "w", Value: value}}, DefaultAdamWConfig()},
		"gradient length":        {[]Param{{Name: "w", Value: value, Grad: short}}, DefaultAdamWConfig()},
		"gradient in its buffer": {[]Param{{Name: "w", Value: shared, Grad: &gpu.Tensor{Buf: value.Buf, Offset: 12, Shape: []int{3}, DType: gpu.F32}}}, DefaultAdamWConfig()},
		"beta2 of 1":             {good, badConfig},
	} {
		if o, err := NewOptimizer(testDevice, c.params, c.cfg); err == nil {
			o.Release()
			t.Errorf("%s: NewOptimizer succeeded", name)
		}
	}
	o, err := NewOptimizer(testDevice, good, DefaultAdamWConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer o.Release()
	rec := testDevice.NewRecorder()
	defer rec.Release()
	if err := o.Step(rec, math.NaN()); err == nil {
		t.Error("Step accepted a NaN learning rate")
	}
	if o.Steps() != 0 {
		t.Errorf("a failed Step advanced the count to %d", o.Steps())
	}
}
