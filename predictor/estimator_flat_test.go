package predictor

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/sparselora/sparselora/gpu"
)

// powerLaw is the spectrum s_i = (i+1)^-alpha: flat for small alpha, like
// the weights of real LLMs.
func powerLaw(alpha float64) func(int) float64 {
	return func(i int) float64 { return math.Pow(float64(i+1), -alpha) }
}

// topChannels selects, the SparseLoRA way (SPEC 4.3, per-channel L2 norms of
// x A B over the tokens), the best quarter of the output channels of the
// rank-r product p = A B [in, out] for the tokens x [tokens, in].
func topChannels(x, p *mat.Dense) []uint32 {
	var h mat.Dense
	h.Mul(x, p)
	tokens, out := h.Dims()
	rows := make([][]float64, tokens)
	for i := range rows {
		rows[i] = h.RawRowView(i)
	}
	return hostTop(hostColumnNorms(rows), out/4)
}

// overlap is the fraction of want's channels that got holds.
func overlap(got, want []uint32) float64 {
	in := make(map[uint32]bool, len(got))
	for _, c := range got {
		in[c] = true
	}
	n := 0
	for _, c := range want {
		if in[c] {
			n++
		}
	}
	return float64(n) / float64(len(want))
}

// TestEstimateRandomizedFlatSpectrum checks the randomized SVD on a flat
// power-law spectrum (s_i = i^-0.2, where the former defaults kept only about
// 80 % of the channels): the top-25 % channels its factors select must be at
// least 95 % those the exact rank-r truncation (gonum's SVD in float64)
// selects.
func TestEstimateRandomizedFlatSpectrum(t *testing.T) {
	const out, in, rank, tokens = 256, 1024, 8, 32
	rng := rand.New(rand.NewPCG(11, 12))
	w := spectrumMatrix(rng, out, in, powerLaw(0.2))
	m, tgt := singleWeightModel(t, gpu.F32, w, out, in)
	x := mat.NewDense(tokens, in, widen(randomMatrix(rng, tokens*in)))
	exact, _ := bestRankR(t, w, out, in, rank)
	want := topChannels(x, exact)

	for _, tc := range []struct {
		name       string
		opts       EstimateOptions
		atLeast    float64 // the overlap must reach this
		below      float64 // and stay under this (0: no bound)
		iterations string
	}{
		{"defaults", EstimateOptions{}, 0.95, 0, ""},
		// The former defaults, to show the test can tell: the spectrum is
		// flat enough to defeat them.
		{"former defaults", EstimateOptions{Oversampling: 8, PowerIterations: 2, PowerTolerance: -1}, 0, 0.95, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Method, tc.opts.NoCache = MethodRandomized, true
			e := estimate(t, m, []Target{tgt}, rank, tc.opts)
			got := overlap(topChannels(x, product(t, e, tgt)), want)
			t.Logf("top-25%% channel overlap with the exact SVD's selection: %.3f", got)
			if got < tc.atLeast || (tc.below > 0 && got >= tc.below) {
				t.Errorf("overlap %.3f, want within [%g, %g)", got, tc.atLeast, tc.below)
			}
		})
	}
}

// TestRandomizedPowerIterationsAdaptive checks the stopping rule: a decaying
// spectrum settles after one power iteration, a flat one takes more but stops
// before the cap, and a negative tolerance runs the cap.
func TestRandomizedPowerIterationsAdaptive(t *testing.T) {
	const out, in, rank, l = 128, 384, 8, 32
	rng := rand.New(rand.NewPCG(13, 14))
	for _, tc := range []struct {
		name        string
		spectrum    func(int) float64
		cap         int
		tolerance   float64
		least, most int
	}{
		{"decaying", func(i int) float64 { return math.Pow(0.5, float64(i)) }, 10, DefaultPowerTolerance, 1, 1},
		{"flat", powerLaw(0.2), 10, DefaultPowerTolerance, 3, 9},
		{"flat/no early stop", powerLaw(0.2), 4, -1, 4, 4},
		{"none", powerLaw(0.2), 0, DefaultPowerTolerance, 0, 0},
		// Rank 4 < r: the estimates past the fourth are rounding noise,
		// which must not keep the iterations going.
		{"rank-deficient", func(i int) float64 { return float64(max(4-i, 0)) }, 10, DefaultPowerTolerance, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := spectrumMatrix(rng, out, in, tc.spectrum)
			m, tgt := singleWeightModel(t, gpu.F32, w, out, in)
			lin := m.Layers[tgt.Layer].Proj[tgt.Proj]
			h, iterations, err := randomizedFactors(context.Background(), testDevice, lin, rank, l, tc.cap, tc.tolerance, rand.New(rand.NewPCG(1, 1)))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d power iterations", iterations)
			if iterations < tc.least || iterations > tc.most {
				t.Errorf("%d power iterations, want %d to %d", iterations, tc.least, tc.most)
			}
			// Whatever the count, the factors are the best rank-r
			// approximation within the sketch: never worse than the tail.
			var p mat.Dense
			p.Mul(mat.NewDense(in, rank, widen(h.a)), mat.NewDense(rank, out, widen(h.b)))
			want, s := bestRankR(t, w, out, in, rank)
			var resid mat.Dense
			resid.Sub(&p, mat.NewDense(out, in, widen(w)).T())
			var tail float64
			for _, x := range s[rank:] {
				tail += x * x
			}
			if r := mat.Norm(&resid, 2); r < math.Sqrt(tail)*(1-1e-5) {
				t.Errorf("residual %.6g below the optimal %.6g: the factors are wrong", r, math.Sqrt(tail))
			}
			if tc.name == "decaying" {
				if err := relErr(&p, want); err > 1e-4 {
					t.Errorf("decaying spectrum: A B vs the exact rank-%d product: relative L2 %.3g", rank, err)
				}
			}
		})
	}
}
