package predictor

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/internal/gputest"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
)

// syntheticModel wraps weights ([out, in] row-major, keyed by layer and
// projection) in a model with just enough structure for Estimate.
func syntheticModel(t *testing.T, dtype gpu.DType, layers int, weights map[Target][]float32, shapes map[Target][2]int) *model.Model {
	t.Helper()
	m := &model.Model{Dev: testDevice}
	for range layers {
		m.Layers = append(m.Layers, &model.Layer{})
	}
	for tgt, w := range weights {
		s := shapes[tgt]
		lin, err := model.NewLinear(testDevice, gputest.Upload(t, testDevice, dtype, w, s[0], s[1]), nil)
		if err != nil {
			t.Fatal(err)
		}
		m.Layers[tgt.Layer].Proj[tgt.Proj] = lin
	}
	t.Cleanup(m.Release)
	return m
}

// singleWeightModel is a one-layer model whose gate_proj is w [out, in].
func singleWeightModel(t *testing.T, dtype gpu.DType, w []float32, out, in int) (*model.Model, Target) {
	tgt := Target{0, model.ProjGate}
	return syntheticModel(t, dtype, 1, map[Target][]float32{tgt: w}, map[Target][2]int{tgt: {out, in}}), tgt
}

func estimate(t *testing.T, m *model.Model, targets []Target, rank int, opts EstimateOptions) *Estimator {
	t.Helper()
	if opts.CacheDir == "" && !opts.NoCache {
		opts.CacheDir = t.TempDir()
	}
	e, err := Estimate(context.Background(), testDevice, m, targets, rank, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Release)
	return e
}

// product downloads a target's factors and returns A B ([in, out]) in float64.
func product(t *testing.T, e *Estimator, tgt Target) *mat.Dense {
	t.Helper()
	f, ok := e.Factors(tgt.Layer, tgt.Proj)
	if !ok {
		t.Fatalf("no factors for %s", tgt.Name())
	}
	a, b := gputest.Download(t, f.A), gputest.Download(t, f.B)
	in, r, out := f.A.Shape[0], f.A.Shape[1], f.B.Shape[1]
	if f.Rank != r || f.B.Shape[0] != r {
		t.Fatalf("%s: A %v, B %v, rank %d", tgt.Name(), f.A.Shape, f.B.Shape, f.Rank)
	}
	var p mat.Dense
	p.Mul(mat.NewDense(in, r, widen(a)), mat.NewDense(r, out, widen(b)))
	return &p
}

// bestRankR is the optimal rank-r approximation of W^T (W [out, in]) in float64
// and the singular values of W.
func bestRankR(t *testing.T, w []float32, out, in, r int) (*mat.Dense, []float64) {
	t.Helper()
	var svd mat.SVD
	if !svd.Factorize(mat.NewDense(out, in, widen(w)).T(), mat.SVDThin) {
		t.Fatal("the reference SVD did not converge")
	}
	var u, v mat.Dense
	svd.UTo(&u)
	svd.VTo(&v)
	s := svd.Values(nil)
	ur := u.Slice(0, in, 0, r)
	vr := v.Slice(0, out, 0, r)
	var us, p mat.Dense
	us.Mul(ur, mat.NewDiagDense(r, s[:r]))
	p.Mul(&us, vr.T())
	return &p, s
}

func relErr(got, want mat.Matrix) float64 {
	var d mat.Dense
	d.Sub(got, want)
	return mat.Norm(&d, 2) / mat.Norm(want, 2)
}

func randomMatrix(rng *rand.Rand, n int) []float32 { return gputest.RandFloats(rng, n) }

// roundBF16 is what a bf16 upload stores.
func roundBF16(v []float32) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = gpu.FromBF16(gpu.ToBF16(x))
	}
	return out
}

func TestEstimateExactSVD(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		out, in, rank int
		dtype         gpu.DType
	}{
		{37, 53, 5, gpu.F32},
		{53, 37, 5, gpu.F32},
		{41, 29, 3, gpu.BF16}, // odd element count: the last bf16 word is half padding
	} {
		t.Run(strconv.Itoa(tc.out)+"x"+strconv.Itoa(tc.in)+"/"+tc.dtype.String(), func(t *testing.T) {
			w := randomMatrix(rng, tc.out*tc.in)
			m, tgt := singleWeightModel(t, tc.dtype, w, tc.out, tc.in)
			if tc.dtype == gpu.BF16 {
				w = roundBF16(w)
			}
			e := estimate(t, m, []Target{tgt}, tc.rank, EstimateOptions{NoCache: true})
			f, _ := e.Factors(tgt.Layer, tgt.Proj)
			if f.Method != MethodExact {
				t.Errorf("method %v, want exact", f.Method)
			}
			got := product(t, e, tgt)
			want, s := bestRankR(t, w, tc.out, tc.in, tc.rank)
			if err := relErr(got, want); err > 1e-5 {
				t.Errorf("A B vs the float64 rank-%d product: relative L2 %.3g", tc.rank, err)
			}
			// The residual of the best rank-r approximation is the tail of the
			// spectrum (Eckart-Young).
			var tail float64
			for _, x := range s[tc.rank:] {
				tail += x * x
			}
			var resid mat.Dense
			resid.Sub(got, mat.NewDense(tc.out, tc.in, widen(w)).T())
			if r := mat.Norm(&resid, 2); math.Abs(r-math.Sqrt(tail)) > 1e-5*math.Sqrt(tail) {
				t.Errorf("||A B - W^T||_F = %.8g, want the spectral tail %.8g", r, math.Sqrt(tail))
			}
			// Sign convention: each column of A has a positive largest-magnitude entry.
			a := gputest.Download(t, f.A)
			for j := 0; j < tc.rank; j++ {
				best := float32(0)
				for i := 0; i < tc.in; i++ {
					if x := a[i*tc.rank+j]; math.Abs(float64(x)) > math.Abs(float64(best)) {
						best = x
					}
				}
				if best <= 0 {
					t.Errorf("column %d of A: largest-magnitude entry %g is not positive", j, best)
				}
			}
		})
	}
}

// decayingMatrix builds W = U diag(s) V^T [out, in] with s_i = 0.5^i and
// random orthonormal U, V.
func decayingMatrix(rng *rand.Rand, out, in int) []float32 {
	return spectrumMatrix(rng, out, in, func(i int) float64 { return math.Pow(0.5, float64(i)) })
}

// spectrumMatrix builds W = U diag(s) V^T [out, in] with s_i = spectrum(i)
// (i from 0) and random orthonormal U, V, in float64 on the host.
func spectrumMatrix(rng *rand.Rand, out, in int, spectrum func(i int) float64) []float32 {
	k := min(out, in)
	orthonormal := func(rows int) *mat.Dense {
		var qr mat.QR
		qr.Factorize(mat.NewDense(rows, k, widen(randomMatrix(rng, rows*k))))
		var q mat.Dense
		qr.QTo(&q)
		return q.Slice(0, rows, 0, k).(*mat.Dense)
	}
	u, v := orthonormal(out), orthonormal(in)
	s := make([]float64, k)
	for i := range s {
		s[i] = spectrum(i)
	}
	var us, w mat.Dense
	us.Mul(u, mat.NewDiagDense(k, s))
	w.Mul(&us, v.T())
	values := make([]float32, out*in)
	for i := range out {
		for j := range in {
			values[i*in+j] = float32(w.At(i, j))
		}
	}
	return values
}

func TestEstimateRandomizedSVD(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, tc := range []struct {
		name    string
		out, in int
		dtype   gpu.DType
		opts    EstimateOptions
		method  Method
		maxRows int // forces weight row blocks when > 0
		// quantize replaces the weight by its 8-bit affine quantization (the
		// reference is then its dequantized values).
		quantize bool
	}{
		{"forced/300x500", 300, 500, gpu.F32, EstimateOptions{Method: MethodRandomized}, MethodRandomized, 0, false},
		{"forced/500x300/bf16", 500, 300, gpu.BF16, EstimateOptions{Method: MethodRandomized}, MethodRandomized, 0, false},
		{"forced/row-blocks", 300, 200, gpu.F32, EstimateOptions{Method: MethodRandomized}, MethodRandomized, 64, false},
		{"auto/40x1030", 40, 1030, gpu.F32, EstimateOptions{}, MethodRandomized, 0, false},
		{"forced/8-bit/row-blocks", 300, 320, gpu.F32, EstimateOptions{Method: MethodRandomized}, MethodRandomized, 64, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const rank = 8
			w := decayingMatrix(rng, tc.out, tc.in)
			m, tgt := singleWeightModel(t, tc.dtype, w, tc.out, tc.in)
			if tc.maxRows > 0 {
				m.Layers[0].Proj[tgt.Proj].BlockRows = tc.maxRows
			}
			if tc.dtype == gpu.BF16 {
				w = roundBF16(w)
			}
			if tc.quantize {
				q, err := model.QuantizeAffine(w, tc.out, tc.in, model.Quantization{Bits: 8, GroupSize: 32}, gpu.ScaleBF16)
				if err != nil {
					t.Fatal(err)
				}
				qt, err := testDevice.NewAffineTensor(q, "quantized gate")
				if err != nil {
					t.Fatal(err)
				}
				lin := m.Layers[0].Proj[tgt.Proj]
				lin.W.Release()
				lin.W, w = qt, q.Dequantize()
			}
			tc.opts.NoCache = true
			e := estimate(t, m, []Target{tgt}, rank, tc.opts)
			if f, _ := e.Factors(tgt.Layer, tgt.Proj); f.Method != tc.method {
				t.Errorf("method %v, want %v", f.Method, tc.method)
			}
			want, _ := bestRankR(t, w, tc.out, tc.in, rank)
			if err := relErr(product(t, e, tgt), want); err > 1e-4 {
				t.Errorf("randomized A B vs the exact rank-%d product: relative L2 %.3g", rank, err)
			}
		})
	}
}

// fixtureTargets reads the rank and the sparse layers' projections from a
// fixture's sparse_reference.json.
func fixtureTargets(t *testing.T, dir string) (int, []Target) {
	t.Helper()
	path := filepath.Join(dir, "sparse_reference.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ref struct {
		Rank     int                `json:"rank"`
		Sparsity map[string]float64 `json:"sparsity"`
	}
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var targets []Target
	for key, s := range ref.Sparsity {
		var layer int
		var module string
		rest, ok := strings.CutPrefix(key, "layers.")
		if ok {
			var num string
			num, module, ok = strings.Cut(rest, ".")
			layer, err = strconv.Atoi(num)
			ok = ok && err == nil
		}
		if !ok {
			t.Fatalf("%s: unexpected sparsity key %q", path, key)
		}
		if s > 0 {
			targets = append(targets, LayerTargets(layer, module == "mlp", module == "self_attn")...)
		}
	}
	return ref.Rank, targets
}

func TestEstimateFixtures(t *testing.T) {
	for _, name := range []string{"llama-gqa", "qwen2-bias"} {
		t.Run(name, func(t *testing.T) {
			dir := fixtures.HF(t, name)
			rank, targets := fixtureTargets(t, dir)
			m, err := model.Load(testDevice, filepath.Join(dir, "model"), gpu.F32)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Release()
			e := estimate(t, m, targets, rank, EstimateOptions{})
			ref, err := safetensors.Open(filepath.Join(dir, "sparse_reference.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			var svdTensors int
			for _, n := range ref.Names() {
				if strings.HasPrefix(n, "svd.") {
					svdTensors++
				}
			}
			if svdTensors != 2*len(e.Targets()) {
				t.Errorf("the fixture has %d svd tensors, the estimator %d targets", svdTensors, len(e.Targets()))
			}
			for _, tgt := range e.Targets() {
				read := func(which string) *mat.Dense {
					name := "svd." + tgt.Name() + "." + which
					info, err := ref.Info(name)
					if err != nil {
						t.Fatal(err)
					}
					v, err := ref.ReadFloat32(name)
					if err != nil {
						t.Fatal(err)
					}
					return mat.NewDense(int(info.Shape[0]), int(info.Shape[1]), widen(v))
				}
				var want mat.Dense
				want.Mul(read("A"), read("B"))
				if err := relErr(product(t, e, tgt), &want); err > 1e-4 {
					t.Errorf("%s: A B vs the fixture: relative L2 %.3g", tgt.Name(), err)
				} else {
					t.Logf("%s: relative L2 %.2g", tgt.Name(), err)
				}
			}
		})
	}
}

func TestEstimateCache(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	const out, in, rank = 24, 40, 4
	gate, up := Target{1, model.ProjGate}, Target{1, model.ProjUp}
	weights := map[Target][]float32{gate: randomMatrix(rng, out*in), up: randomMatrix(rng, out*in)}
	shapes := map[Target][2]int{gate: {out, in}, up: {out, in}}
	m := syntheticModel(t, gpu.F32, 2, weights, shapes)
	dir := t.TempDir()
	var warnings bytes.Buffer
	calls := 0
	opts := EstimateOptions{CacheDir: dir, Warnings: &warnings, Progress: func(done, total int) { calls++ }}
	targets := LayerTargets(1, true, false)

	first := estimate(t, m, targets, rank, opts)
	if first.FromCache() || calls != 3 {
		t.Fatalf("first estimate: from cache %v, %d progress calls (want 3: 0/2, 1/2, 2/2)", first.FromCache(), calls)
	}
	if first.CacheKeyedBy() != CacheKeyContent {
		t.Errorf("a model built in memory: cache keyed by %v, want the weights' content", first.CacheKeyedBy())
	}
	if _, err := os.Stat(first.CachePath()); err != nil || filepath.Dir(first.CachePath()) != dir {
		t.Fatalf("cache file %q: %v", first.CachePath(), err)
	}
	want := product(t, first, up)

	calls = 0
	second := estimate(t, m, targets, rank, opts)
	if !second.FromCache() || calls != 0 || second.CachePath() != first.CachePath() {
		t.Fatalf("second estimate: from cache %v, %d progress calls, path %s (first %s)", second.FromCache(), calls, second.CachePath(), first.CachePath())
	}
	if err := relErr(product(t, second, up), want); err != 0 {
		t.Errorf("cached factors differ: relative L2 %g", err)
	}

	// The rank and the method are part of the key.
	if e := estimate(t, m, targets, rank-1, opts); e.CachePath() == first.CachePath() || e.FromCache() {
		t.Errorf("rank %d reused the rank-%d cache file", rank-1, rank)
	}
	forced := opts
	forced.Method = MethodRandomized
	if e := estimate(t, m, targets, rank, forced); e.CachePath() == first.CachePath() || e.FromCache() {
		t.Errorf("the randomized SVD reused the exact SVD's cache file")
	}

	// A truncated file is reported, rebuilt and rewritten.
	info, err := os.Stat(first.CachePath())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(first.CachePath(), info.Size()/2); err != nil {
		t.Fatal(err)
	}
	warnings.Reset()
	calls = 0
	rebuilt := estimate(t, m, targets, rank, opts)
	if rebuilt.FromCache() || calls == 0 {
		t.Errorf("truncated cache: from cache %v, %d progress calls", rebuilt.FromCache(), calls)
	}
	if !strings.Contains(warnings.String(), first.CachePath()) {
		t.Errorf("the warning %q does not name the cache file", warnings.String())
	}
	if err := relErr(product(t, rebuilt, up), want); err > 1e-6 {
		t.Errorf("rebuilt factors differ: relative L2 %g", err)
	}
	if e := estimate(t, m, targets, rank, opts); !e.FromCache() {
		t.Errorf("the rebuilt cache file was not reused")
	}

	// A well-formed file whose tensors do not fit (here: the wrong shapes) is
	// rebuilt too.
	wrong, err := safetensors.NewFloatTensor(safetensors.F32, []int{1, 1}, []float32{1})
	if err != nil {
		t.Fatal(err)
	}
	md := map[string]string{"format": cacheFormat, "key": strings.TrimSuffix(strings.TrimPrefix(filepath.Base(first.CachePath()), "svd-r4-"), ".safetensors"), "rank": "4"}
	bad := map[string]safetensors.Tensor{}
	for _, tgt := range targets {
		bad["svd."+tgt.Name()+".A"], bad["svd."+tgt.Name()+".B"] = wrong, wrong
	}
	if err := safetensors.WriteFile(first.CachePath(), bad, md); err != nil {
		t.Fatal(err)
	}
	warnings.Reset()
	if e := estimate(t, m, targets, rank, opts); e.FromCache() || !strings.Contains(warnings.String(), "want F32 [40 4]") {
		t.Errorf("mis-shaped cache: from cache %v, warning %q", e.FromCache(), warnings.String())
	}

	// Changing one weight value changes the key.
	changed := append([]float32(nil), weights[gate]...)
	changed[17] += 0.25
	if err := m.Layers[1].Proj[model.ProjGate].W.Upload(changed); err != nil {
		t.Fatal(err)
	}
	calls = 0
	third := estimate(t, m, targets, rank, opts)
	if third.FromCache() || third.CachePath() == first.CachePath() || calls == 0 {
		t.Errorf("changed weight: from cache %v, path %s (before %s)", third.FromCache(), third.CachePath(), first.CachePath())
	}
	wantGate, _ := bestRankR(t, changed, out, in, rank)
	if err := relErr(product(t, third, gate), wantGate); err > 1e-5 {
		t.Errorf("factors of the changed weight: relative L2 %g", err)
	}
}

func TestEstimateErrors(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	m, tgt := singleWeightModel(t, gpu.F32, randomMatrix(rng, 6*10), 6, 10)
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		targets []Target
		rank    int
		opts    EstimateOptions
		want    string
	}{
		{"rank 0", []Target{tgt}, 0, EstimateOptions{}, "rank 0"},
		{"rank above the smaller dimension", []Target{tgt}, 7, EstimateOptions{}, "layers.0.mlp.gate_proj"},
		{"missing layer", []Target{{3, model.ProjQ}}, 2, EstimateOptions{}, "layer 3"},
		{"missing projection", []Target{{0, model.ProjQ}}, 2, EstimateOptions{}, "layers.0.self_attn.q_proj"},
		{"negative oversampling", []Target{tgt}, 2, EstimateOptions{Oversampling: -1}, "oversampling"},
		{"NaN tolerance", []Target{tgt}, 2, EstimateOptions{PowerTolerance: math.NaN()}, "tolerance"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.NoCache = true
			e, err := Estimate(ctx, testDevice, m, tc.targets, tc.rank, tc.opts)
			if err == nil {
				e.Release()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestEstimateParseMethod(t *testing.T) {
	for _, m := range []Method{MethodAuto, MethodExact, MethodRandomized} {
		if got, err := ParseMethod(m.String()); err != nil || got != m {
			t.Errorf("ParseMethod(%q) = %v, %v", m, got, err)
		}
	}
	if _, err := ParseMethod("lanczos"); err == nil {
		t.Error("ParseMethod accepted an unknown method")
	}
}

func TestDefaultCacheDir(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/tmp/xdg-cache")
	if d, err := DefaultCacheDir(); err != nil || d != filepath.Join("/tmp/xdg-cache", "sparselora", "svd") {
		t.Errorf("DefaultCacheDir() = %q, %v", d, err)
	}
}

func TestEstimateSparseTargets(t *testing.T) {
	c := &SparsityConfig{Layers: map[int]LayerSparsity{
		4: {MLP: 0.5}, 2: {MLP: 0.9, Attention: 0.25}, 3: {},
	}}
	want := []Target{
		{2, model.ProjQ}, {2, model.ProjK}, {2, model.ProjV}, {2, model.ProjGate}, {2, model.ProjUp},
		{4, model.ProjGate}, {4, model.ProjUp},
	}
	if got := SparseTargets(c); !slices.Equal(got, want) {
		t.Errorf("SparseTargets = %v, want %v", got, want)
	}
	c.Dense = true
	if got := SparseTargets(c); len(got) != 0 {
		t.Errorf("dense mode: SparseTargets = %v, want none", got)
	}
}

// A cache that cannot be written is only a warning, and the estimator says
// that the factors were not cached (a caller must not report "cached in").
func TestEstimateCacheWriteFailure(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	const out, in, rank = 12, 20, 3
	gate := Target{0, model.ProjGate}
	m := syntheticModel(t, gpu.F32, 1, map[Target][]float32{gate: randomMatrix(rng, out*in)}, map[Target][2]int{gate: {out, in}})
	notADir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notADir, nil, 0o644)
	var warnings bytes.Buffer
	e := estimate(t, m, []Target{gate}, rank, EstimateOptions{CacheDir: notADir, Warnings: &warnings})
	if e.Cached() || e.FromCache() || !strings.Contains(warnings.String(), "could not be cached") {
		t.Errorf("cached %v, from cache %v, warnings %q; want not cached and a warning", e.Cached(), e.FromCache(), warnings.String())
	}
	ok := estimate(t, m, []Target{gate}, rank, EstimateOptions{CacheDir: t.TempDir(), Warnings: &warnings})
	if !ok.Cached() {
		t.Error("a written cache file is not reported as cached")
	}
}
