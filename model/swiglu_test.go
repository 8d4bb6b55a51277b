package model

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

func referenceSigmoid(z float64) float64 { return 1 / (1 + math.Exp(-z)) }

// referenceSwiGLU returns h = silu(g) * u, and for dh the gradients dg, du.
func referenceSwiGLU(g, u, dh []float64) (h, dg, du []float64) {
	h, dg, du = make([]float64, len(g)), make([]float64, len(g)), make([]float64, len(g))
	for i, z := range g {
		s := referenceSigmoid(z)
		h[i] = z * s * u[i]
		dg[i] = dh[i] * u[i] * s * (1 + z*(1-s))
		du[i] = dh[i] * z * s
	}
	return h, dg, du
}

// swiGLUInputs are gate values spread like pre-activations, with a few extreme
// ones that overflow a naive exp(-z) in f32.
func swiGLUInputs(rng *rand.Rand, n int) []float32 {
	g := gputest.RandFloats(rng, n)
	extremes := []float32{-100, 100, -1000, 1000, -88.8, 88.8, 0}
	for i := range g {
		g[i] *= 3
		if i%97 == 5 {
			g[i] = extremes[(i/97)%len(extremes)]
		}
	}
	return g
}

func TestSwiGLU(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	cases := []struct {
		n         int
		gridLimit uint32
	}{{1, 0}, {7 * 13, 0}, {129 * 65, 0}, {3 * 5000, 0}, {2000, 3}}
	for _, c := range cases {
		g, u, dh := swiGLUInputs(rng, c.n), gputest.RandFloats(rng, c.n), gputest.RandFloats(rng, c.n)
		wantH, wantDg, wantDu := referenceSwiGLU(widen(g), widen(u), widen(dh))
		gt := gputest.Upload(t, testDevice, gpu.F32, g, c.n)
		ut := gputest.Upload(t, testDevice, gpu.F32, u, c.n)
		dht := gputest.Upload(t, testDevice, gpu.F32, dh, c.n)
		h := gputest.Poisoned(t, testDevice, c.n)
		rec := testDevice.NewRecorder()
		if err := swiGLUForward(rec, gt, ut, h, c.n, c.gridLimit); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		wantForward := gputest.Download(t, h)
		// Backward writes dg and du over g and u.
		if err := swiGLUBackward(rec, gt, ut, dht, c.n, c.gridLimit); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		dg, du := gt, ut
		if got := gputest.Download(t, h); !slices.Equal(got, wantForward) {
			t.Errorf("n = %d: backward changed h", c.n)
		}
		for _, check := range []struct {
			name string
			got  *gpu.Tensor
			want []float64
		}{{"h", h, wantH}, {"dg", dg, wantDg}, {"du", du, wantDu}} {
			if e := gputest.RelL2(gputest.Download(t, check.got), check.want); !(e < 1e-5) {
				t.Errorf("n = %d (grid limit %d): %s relative L2 error %g", c.n, c.gridLimit, check.name, e)
			}
		}
		rec.Release()
		for _, tensor := range []*gpu.Tensor{gt, ut, dht, h} {
			tensor.Release()
		}
	}
}

// TestSwiGLUReferenceGradient checks the reference gradients against central
// differences of the reference forward.
func TestSwiGLUReferenceGradient(t *testing.T) {
	const n, step = 50, 1e-6
	rng := rand.New(rand.NewPCG(23, 24))
	g, u, dh := widen(swiGLUInputs(rng, n)), widen(gputest.RandFloats(rng, n)), widen(gputest.RandFloats(rng, n))
	_, dg, du := referenceSwiGLU(g, u, dh)
	h := func(g, u float64) float64 { return g * referenceSigmoid(g) * u }
	for i := range n {
		numericDg := dh[i] * (h(g[i]+step, u[i]) - h(g[i]-step, u[i])) / (2 * step)
		numericDu := dh[i] * (h(g[i], u[i]+step) - h(g[i], u[i]-step)) / (2 * step)
		if math.Abs(numericDg-dg[i]) > 1e-6*(1+math.Abs(dg[i])) || math.Abs(numericDu-du[i]) > 1e-6*(1+math.Abs(du[i])) {
			t.Errorf("g = %g: reference (dg, du) = (%g, %g), central differences (%g, %g)", g[i], dg[i], du[i], numericDg, numericDu)
		}
	}
}

func TestSwiGLUErrors(t *testing.T) {
	a := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 10), 10)
	defer a.Release()
	b := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 10), 10)
	defer b.Release()
	c := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 10), 10)
	defer c.Release()
	d := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 10), 10)
	defer d.Release()
	short := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 9), 9)
	defer short.Release()
	rec := testDevice.NewRecorder()
	defer rec.Release()
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"nil recorder", SwiGLUForward(nil, a, b, c, 10), "nil recorder"},
		{"short output", SwiGLUForward(rec, a, b, short, 10), "h has shape [9]"},
		{"in place", SwiGLUForward(rec, a, b, a, 10), "overlap"},
		{"negative n", SwiGLUForward(rec, a, b, c, -1), "negative"},
		{"short dh", SwiGLUBackward(rec, a, b, short, 10), "dh has shape [9]"},
		{"nil u", SwiGLUBackward(rec, a, nil, c, 10), "u is nil"},
		{"g aliases u", SwiGLUBackward(rec, a, a, c, 10), "overlap"},
	}
	for _, c := range cases {
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
