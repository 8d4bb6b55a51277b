package predictor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/gonum/lapack/lapack64"
	"gonum.org/v1/gonum/mat"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
)

// Method chooses how a projection's rank-r factors are computed.
type Method int

const (
	// MethodAuto uses the exact SVD when both dimensions of the weight are at
	// most ExactMaxDim and the randomized SVD otherwise.
	MethodAuto Method = iota
	// MethodExact always computes the full SVD on the host (gonum).
	MethodExact
	// MethodRandomized always uses the randomized SVD, its products on the GPU.
	MethodRandomized
)

// ExactMaxDim is the largest weight dimension MethodAuto still factors exactly:
// a 1024 x 1024 SVD takes well under a second on the host, while the weights of
// real models (4096 and up) would take minutes each and gain nothing, since
// the randomized SVD of their decaying spectra is as accurate as the f32
// arithmetic that consumes the factors.
const ExactMaxDim = 1024

// Defaults of EstimateOptions.
const (
	DefaultOversampling    = 8
	DefaultPowerIterations = 2
)

func (m Method) String() string {
	switch m {
	case MethodAuto:
		return "auto"
	case MethodExact:
		return "exact"
	case MethodRandomized:
		return "randomized"
	}
	return fmt.Sprintf("Method(%d)", int(m))
}

// ParseMethod reads a Method from its name ("auto", "exact", "randomized"), as
// given on the command line.
func ParseMethod(s string) (Method, error) {
	for _, m := range []Method{MethodAuto, MethodExact, MethodRandomized} {
		if s == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown SVD method %q (want auto, exact or randomized)", s)
}

// Target names one frozen projection to factor.
type Target struct {
	Layer int
	Proj  model.Projection
}

// Name is the projection's module path under the model, as in the fixtures
// and the cache file: "layers.3.mlp.gate_proj".
func (t Target) Name() string {
	return fmt.Sprintf("layers.%d.%s.%s", t.Layer, t.Proj.Module(), t.Proj)
}

// LayerTargets lists the projections the predictor needs for one layer: gate
// and up when its FFN is sparse, q, k and v when its attention is sparse (down
// and o only consume the selection, so they are never factored).
func LayerTargets(layer int, ffn, attention bool) []Target {
	var ts []Target
	if attention {
		ts = append(ts, Target{layer, model.ProjQ}, Target{layer, model.ProjK}, Target{layer, model.ProjV})
	}
	if ffn {
		ts = append(ts, Target{layer, model.ProjGate}, Target{layer, model.ProjUp})
	}
	return ts
}

// SparseTargets lists the projections to factor for a sparsity configuration:
// those of every layer whose FFN or attention sparsity is above 0, sorted by
// layer. Dense mode needs none.
func SparseTargets(c *SparsityConfig) []Target {
	if c == nil || c.Dense {
		return nil
	}
	var ts []Target
	for _, layer := range slices.Sorted(maps.Keys(c.Layers)) {
		s := c.Layers[layer]
		ts = append(ts, LayerTargets(layer, s.MLP > 0, s.Attention > 0)...)
	}
	return ts
}

// EstimateOptions tune Estimate. The zero value is a sensible default.
type EstimateOptions struct {
	// CacheDir holds the factor files; "" means DefaultCacheDir().
	CacheDir string
	// NoCache computes the factors without reading or writing a cache file.
	NoCache bool
	// Method forces the exact or the randomized SVD; MethodAuto decides by size.
	Method Method
	// Oversampling is the number of extra sketch columns of the randomized
	// SVD; 0 means DefaultOversampling. The sketch never exceeds the weight's
	// smaller dimension.
	Oversampling int
	// PowerIterations of the randomized SVD; 0 means DefaultPowerIterations,
	// a negative value none.
	PowerIterations int
	// Seed of the Gaussian test matrices (each projection draws its own stream
	// from Seed, its layer and its projection, so results do not depend on
	// which other projections are estimated).
	Seed uint64
	// Progress, when set, is called with the number of projections factored so
	// far and the total, starting with (0, total). It is not called at all
	// when every factor comes from the cache.
	Progress func(done, total int)
	// Warnings receives non-fatal problems: an unreadable cache file that is
	// rebuilt, or a cache file that cannot be written. nil means os.Stderr.
	Warnings io.Writer
}

// oversampling and powerIterations resolve the defaults.
func (o EstimateOptions) oversampling() int {
	if o.Oversampling == 0 {
		return DefaultOversampling
	}
	return o.Oversampling
}

func (o EstimateOptions) powerIterations() int {
	switch {
	case o.PowerIterations == 0:
		return DefaultPowerIterations
	case o.PowerIterations < 0:
		return 0
	}
	return o.PowerIterations
}

// methodFor is the method used for a weight of shape [out, in].
func (o EstimateOptions) methodFor(out, in int) Method {
	if o.Method != MethodAuto {
		return o.Method
	}
	if out <= ExactMaxDim && in <= ExactMaxDim {
		return MethodExact
	}
	return MethodRandomized
}

// sketchWidth is the number of columns of the randomized sketch: rank plus
// oversampling, at most the weight's smaller dimension.
func (o EstimateOptions) sketchWidth(rank, out, in int) int {
	return min(rank+o.oversampling(), out, in)
}

func (o EstimateOptions) warnings() io.Writer {
	if o.Warnings == nil {
		return os.Stderr
	}
	return o.Warnings
}

// DefaultCacheDir is $XDG_CACHE_HOME/sparselora/svd, or the platform's user
// cache folder (os.UserCacheDir) followed by sparselora/svd.
func DefaultCacheDir() (string, error) {
	// XDG requires absolute paths; a relative one is ignored as the spec says.
	if x := os.Getenv("XDG_CACHE_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "sparselora", "svd"), nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("locating the SVD cache folder (set XDG_CACHE_HOME or a cache folder option): %w", err)
	}
	return filepath.Join(d, "sparselora", "svd"), nil
}

// Factors are the rank-r factors of one frozen projection W [out, in]:
// A [in, r] and B [r, out], f32 on the GPU, with x A B ~ x W^T. For
// W^T = U S V^T, A = U_r sqrt(S_r) and B = sqrt(S_r) V_r^T; each component's
// sign makes the largest-magnitude entry of its column of A positive.
type Factors struct {
	A, B *gpu.Tensor
	Rank int
	// Method is how they were computed (MethodExact or MethodRandomized).
	Method Method
}

func (f *Factors) release() {
	f.A.Release()
	f.B.Release()
}

// Estimator holds the SVD factors of the frozen projections of a model's
// sparse layers. It is read-only after Estimate and safe for concurrent use;
// Release frees its GPU memory.
type Estimator struct {
	rank      int
	targets   []Target
	factors   map[Target]*Factors
	cachePath string
	fromCache bool
}

// Rank is the factors' rank r.
func (e *Estimator) Rank() int { return e.rank }

// Targets lists the factored projections, sorted by layer and projection.
func (e *Estimator) Targets() []Target { return slices.Clone(e.targets) }

// Factors returns the factors of projection p of a layer, if estimated.
func (e *Estimator) Factors(layer int, p model.Projection) (*Factors, bool) {
	f, ok := e.factors[Target{layer, p}]
	return f, ok
}

// CachePath is the cache file the factors were read from or written to ("" with
// NoCache).
func (e *Estimator) CachePath() string { return e.cachePath }

// FromCache reports whether the factors were read from the cache file.
func (e *Estimator) FromCache() bool { return e.fromCache }

// Release frees the factors' GPU memory. Releasing twice is harmless.
func (e *Estimator) Release() {
	for _, f := range e.factors {
		f.release()
	}
	e.factors = nil
}

// hostFactors are one projection's factors on the host, row-major.
type hostFactors struct {
	a []float32 // [in, r]
	b []float32 // [r, out]
}

// Estimate computes (or reads from the cache) the rank-r factors of the frozen
// base weights of the target projections of m: the weights Linear.W only, so
// adapters (LoRA) never enter. Small weights are factored exactly on the host;
// large ones with a randomized SVD whose products run on dev (see
// EstimateOptions.Method).
//
// The cache file, in opts.CacheDir, is keyed by a SHA-256 of the targets'
// weight bytes (read back from the GPU, so the key follows what the model
// really holds, whatever checkpoint format it came from), their dtypes and
// shapes, the rank and the method with its parameters. A cache file that
// cannot be used (truncated, corrupt, wrong tensors) is reported on
// opts.Warnings, recomputed and overwritten; failing to write the cache is
// also only a warning, since the factors themselves are fine.
func Estimate(ctx context.Context, dev *gpu.Device, m *model.Model, targets []Target, rank int, opts EstimateOptions) (*Estimator, error) {
	targets, err := checkEstimate(dev, m, targets, rank, opts)
	if err != nil {
		return nil, err
	}
	e := &Estimator{rank: rank, targets: targets, factors: make(map[Target]*Factors, len(targets))}
	ok := false
	defer func() {
		if !ok {
			e.Release()
		}
	}()

	if opts.NoCache {
		host, err := computeAll(ctx, dev, m, targets, rank, opts)
		if err != nil {
			return nil, err
		}
		if err := e.upload(dev, m, host, opts); err != nil {
			return nil, err
		}
		ok = true
		return e, nil
	}

	dir := opts.CacheDir
	if dir == "" {
		if dir, err = DefaultCacheDir(); err != nil {
			return nil, err
		}
	}
	key, err := cacheKey(ctx, m, targets, rank, opts)
	if err != nil {
		return nil, err
	}
	e.cachePath = filepath.Join(dir, fmt.Sprintf("svd-r%d-%s.safetensors", rank, key))

	host, err := readCache(e.cachePath, key, m, targets, rank)
	switch {
	case err == nil:
		e.fromCache = true
	case errors.Is(err, fs.ErrNotExist):
		// A plain miss.
	default:
		fmt.Fprintf(opts.warnings(), "warning: ignoring an unusable SVD cache file: %v; recomputing it\n", err)
	}
	if !e.fromCache {
		if host, err = computeAll(ctx, dev, m, targets, rank, opts); err != nil {
			return nil, err
		}
		if err := writeCache(e.cachePath, key, m, targets, rank, host); err != nil {
			fmt.Fprintf(opts.warnings(), "warning: the SVD factors could not be cached: %v\n", err)
		}
	}
	if err := e.upload(dev, m, host, opts); err != nil {
		return nil, err
	}
	ok = true
	return e, nil
}

// checkEstimate validates the arguments and returns the targets sorted by
// layer and projection, without duplicates.
func checkEstimate(dev *gpu.Device, m *model.Model, targets []Target, rank int, opts EstimateOptions) ([]Target, error) {
	if dev == nil || m == nil {
		return nil, errors.New("svd estimate: a device and a model are required")
	}
	if m.Dev != nil && m.Dev != dev {
		return nil, errors.New("svd estimate: the model's weights live on another device")
	}
	if rank < 1 {
		return nil, fmt.Errorf("svd estimate: rank %d, want at least 1", rank)
	}
	if opts.Oversampling < 0 {
		return nil, fmt.Errorf("svd estimate: negative oversampling %d", opts.Oversampling)
	}
	switch opts.Method {
	case MethodAuto, MethodExact, MethodRandomized:
	default:
		return nil, fmt.Errorf("svd estimate: unknown method %v", opts.Method)
	}
	sorted := slices.Clone(targets)
	slices.SortFunc(sorted, func(a, b Target) int {
		if a.Layer != b.Layer {
			return a.Layer - b.Layer
		}
		return int(a.Proj) - int(b.Proj)
	})
	sorted = slices.Compact(sorted)
	for _, t := range sorted {
		if t.Layer < 0 || t.Layer >= len(m.Layers) || m.Layers[t.Layer] == nil {
			return nil, fmt.Errorf("svd estimate: layer %d does not exist (the model has %d layers)", t.Layer, len(m.Layers))
		}
		if t.Proj < 0 || int(t.Proj) >= len(m.Layers[t.Layer].Proj) {
			return nil, fmt.Errorf("svd estimate: layer %d: unknown projection %d", t.Layer, int(t.Proj))
		}
		lin := m.Layers[t.Layer].Proj[t.Proj]
		if lin == nil || lin.W == nil {
			return nil, fmt.Errorf("svd estimate: %s has no weight", t.Name())
		}
		if len(lin.W.Shape) != 2 || lin.W.Shape[0] != lin.Out || lin.W.Shape[1] != lin.In {
			return nil, fmt.Errorf("svd estimate: %s: weight shape %v does not match [%d, %d]", t.Name(), lin.W.Shape, lin.Out, lin.In)
		}
		if rank > min(lin.Out, lin.In) {
			return nil, fmt.Errorf("svd estimate: rank %d exceeds the smaller dimension of %s [%d, %d]", rank, t.Name(), lin.Out, lin.In)
		}
	}
	return sorted, nil
}

// upload moves the host factors to the GPU.
func (e *Estimator) upload(dev *gpu.Device, m *model.Model, host map[Target]hostFactors, opts EstimateOptions) error {
	for _, t := range e.targets {
		lin := m.Layers[t.Layer].Proj[t.Proj]
		h := host[t]
		f := &Factors{Rank: e.rank, Method: opts.methodFor(lin.Out, lin.In)}
		var err error
		if f.A, err = uploadF32(dev, "svd."+t.Name()+".A", h.a, lin.In, e.rank); err != nil {
			return err
		}
		if f.B, err = uploadF32(dev, "svd."+t.Name()+".B", h.b, e.rank, lin.Out); err != nil {
			f.A.Release()
			return err
		}
		e.factors[t] = f
	}
	return nil
}

func uploadF32(dev *gpu.Device, label string, values []float32, shape ...int) (*gpu.Tensor, error) {
	t, err := dev.NewTensor(gpu.F32, label, shape...)
	if err != nil {
		return nil, fmt.Errorf("svd estimate: %s: %w", label, err)
	}
	if err := t.Upload(values); err != nil {
		t.Release()
		return nil, fmt.Errorf("svd estimate: %s: %w", label, err)
	}
	return t, nil
}

// computeAll factors every target, reporting progress.
func computeAll(ctx context.Context, dev *gpu.Device, m *model.Model, targets []Target, rank int, opts EstimateOptions) (map[Target]hostFactors, error) {
	host := make(map[Target]hostFactors, len(targets))
	if opts.Progress != nil {
		opts.Progress(0, len(targets))
	}
	for i, t := range targets {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		lin := m.Layers[t.Layer].Proj[t.Proj]
		var h hostFactors
		var err error
		if opts.methodFor(lin.Out, lin.In) == MethodExact {
			h, err = exactFactors(ctx, lin, rank)
		} else {
			rng := rand.New(rand.NewPCG(opts.Seed, uint64(t.Layer)<<8|uint64(t.Proj)))
			h, err = randomizedFactors(ctx, dev, lin, rank, opts.sketchWidth(rank, lin.Out, lin.In), opts.powerIterations(), rng)
		}
		if err != nil {
			return nil, fmt.Errorf("svd estimate: %s: %w", t.Name(), err)
		}
		if !allFinite(h.a) || !allFinite(h.b) {
			return nil, fmt.Errorf("svd estimate: %s: the factors are not finite (does the weight hold NaN or Inf?)", t.Name())
		}
		host[t] = h
		if opts.Progress != nil {
			opts.Progress(i+1, len(targets))
		}
	}
	return host, nil
}

// readbackChunk bounds one weight read-back, so that hashing a large weight
// never needs a staging buffer of its full size.
const readbackChunk = 64 << 20

// readWeight passes the stored bytes of a weight to fn in order, in chunks.
func readWeight(ctx context.Context, w *gpu.Tensor, fn func([]byte)) error {
	total := w.Bytes()
	for done := uint64(0); done < total; {
		n := min(total-done, readbackChunk)
		raw, err := w.Buf.Read(ctx, w.Offset+done, n)
		if err != nil {
			return fmt.Errorf("reading the weight back: %w", err)
		}
		fn(raw)
		done += n
	}
	return nil
}

// weightValues reads a weight back as float64, row-major [out, in].
func weightValues(ctx context.Context, lin *model.Linear) ([]float64, error) {
	raw := make([]byte, 0, lin.W.Bytes())
	if err := readWeight(ctx, lin.W, func(b []byte) { raw = append(raw, b...) }); err != nil {
		return nil, err
	}
	var f32 []float32
	if lin.W.DType == gpu.BF16 {
		f32 = gpu.UnpackBF16(raw, lin.W.Len())
	} else {
		f32 = gpu.BytesF32(raw)
	}
	out := make([]float64, len(f32))
	for i, v := range f32 {
		out[i] = float64(v)
	}
	return out, nil
}

// cacheFormat names the cache layout and algorithm; changing either changes
// every key, so stale files are never read.
const cacheFormat = "sparselora-svd-v1"

// cacheKey hashes what determines the factors: the format, rank, and for each
// target its name, method (with the randomized SVD's parameters), dtype, shape
// and stored bytes.
func cacheKey(ctx context.Context, m *model.Model, targets []Target, rank int, opts EstimateOptions) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\nrank=%d\n", cacheFormat, rank)
	for _, t := range targets {
		lin := m.Layers[t.Layer].Proj[t.Proj]
		fmt.Fprintf(h, "%s %s %dx%d %s\n", t.Name(), methodDescription(opts, rank, lin), lin.Out, lin.In, lin.W.DType)
		if err := hashWeight(ctx, h, lin.W); err != nil {
			return "", fmt.Errorf("svd estimate: hashing %s: %w", t.Name(), err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hashWeight(ctx context.Context, h hash.Hash, w *gpu.Tensor) error {
	return readWeight(ctx, w, func(b []byte) { h.Write(b) })
}

// methodDescription spells out everything the method's result depends on.
func methodDescription(opts EstimateOptions, rank int, lin *model.Linear) string {
	if opts.methodFor(lin.Out, lin.In) == MethodExact {
		return "exact"
	}
	return fmt.Sprintf("randomized(sketch=%d,power=%d,seed=%d)", opts.sketchWidth(rank, lin.Out, lin.In), opts.powerIterations(), opts.Seed)
}

func factorName(t Target, which string) string { return "svd." + t.Name() + "." + which }

// readCache loads the factors of a cache file, checking that it is the file
// for key and holds every target's factors with the right shapes and finite
// values. A missing file gives an error wrapping fs.ErrNotExist; every other
// error names the file.
func readCache(path, key string, m *model.Model, targets []Target, rank int) (map[Target]hostFactors, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err // an *fs.PathError, which names the file
	}
	f, err := safetensors.Open(path)
	if err != nil {
		// safetensors errors name the file. One wrapping fs.ErrNotExist (the
		// file vanished since Stat) is still reported, not taken for a miss.
		return nil, corruptCache{err}
	}
	defer f.Close()
	md := f.Metadata()
	if md["format"] != cacheFormat || md["key"] != key || md["rank"] != strconv.Itoa(rank) {
		return nil, corruptCache{fmt.Errorf("%s: its metadata (format %q, rank %q, key %q) does not match its name", path, md["format"], md["rank"], md["key"])}
	}
	if n := len(f.Names()); n != 2*len(targets) {
		return nil, corruptCache{fmt.Errorf("%s: %d tensors, want %d", path, n, 2*len(targets))}
	}
	host := make(map[Target]hostFactors, len(targets))
	for _, t := range targets {
		lin := m.Layers[t.Layer].Proj[t.Proj]
		a, err := readCachedTensor(f, factorName(t, "A"), lin.In, rank)
		if err != nil {
			return nil, corruptCache{err}
		}
		b, err := readCachedTensor(f, factorName(t, "B"), rank, lin.Out)
		if err != nil {
			return nil, corruptCache{err}
		}
		host[t] = hostFactors{a: a, b: b}
	}
	return host, nil
}

// corruptCache marks a cache file that exists but cannot be used, so that it
// is never mistaken for a miss even when the cause wraps fs.ErrNotExist.
type corruptCache struct{ err error }

func (c corruptCache) Error() string { return c.err.Error() }

func readCachedTensor(f *safetensors.File, name string, rows, cols int) ([]float32, error) {
	info, err := f.Info(name)
	if err != nil {
		return nil, err
	}
	if info.Dtype != safetensors.F32 || !slices.Equal(info.Shape, []int{rows, cols}) {
		return nil, fmt.Errorf("%s: tensor %s is %s %v, want F32 [%d %d]", f.Path(), name, info.Dtype, info.Shape, rows, cols)
	}
	v, err := f.ReadFloat32(name)
	if err != nil {
		return nil, err
	}
	if !allFinite(v) {
		return nil, fmt.Errorf("%s: tensor %s holds non-finite values", f.Path(), name)
	}
	return v, nil
}

// writeCache stores the factors atomically (safetensors.WriteFile writes a
// temporary file and renames it), so concurrent runs and crashes never leave a
// torn file under the final name.
func writeCache(path, key string, m *model.Model, targets []Target, rank int, host map[Target]hostFactors) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating the SVD cache folder: %w", err)
	}
	tensors := make(map[string]safetensors.Tensor, 2*len(targets))
	for _, t := range targets {
		lin := m.Layers[t.Layer].Proj[t.Proj]
		h := host[t]
		a, err := safetensors.NewFloatTensor(safetensors.F32, []int{lin.In, rank}, h.a)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		b, err := safetensors.NewFloatTensor(safetensors.F32, []int{rank, lin.Out}, h.b)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		tensors[factorName(t, "A")] = a
		tensors[factorName(t, "B")] = b
	}
	return safetensors.WriteFile(path, tensors, map[string]string{
		"format": cacheFormat, "key": key, "rank": strconv.Itoa(rank),
	})
}

// exactFactors computes the factors from the full SVD of W^T on the host.
func exactFactors(ctx context.Context, lin *model.Linear, rank int) (hostFactors, error) {
	values, err := weightValues(ctx, lin)
	if err != nil {
		return hostFactors{}, err
	}
	w := mat.NewDense(lin.Out, lin.In, values)
	var svd mat.SVD
	if !svd.Factorize(w.T(), mat.SVDThin) {
		return hostFactors{}, errors.New("the SVD did not converge")
	}
	var u, v mat.Dense
	svd.UTo(&u) // [in, k]
	svd.VTo(&v) // [out, k]
	return splitFactors(&u, svd.Values(nil), &v, rank), nil
}

// splitFactors turns W^T ~ U S V^T into A = U_r sqrt(S_r) and
// B = sqrt(S_r) V_r^T. The SVD fixes each component only up to sign; flipping
// it so the largest-magnitude entry of U's column is positive makes the
// factors reproducible across methods and library versions.
func splitFactors(u *mat.Dense, s []float64, v *mat.Dense, rank int) hostFactors {
	in, _ := u.Dims()
	out, _ := v.Dims()
	h := hostFactors{a: make([]float32, in*rank), b: make([]float32, rank*out)}
	for j := 0; j < rank; j++ {
		pivot := 0
		for i := 1; i < in; i++ {
			if math.Abs(u.At(i, j)) > math.Abs(u.At(pivot, j)) {
				pivot = i
			}
		}
		scale := math.Sqrt(max(s[j], 0))
		if u.At(pivot, j) < 0 {
			scale = -scale
		}
		for i := 0; i < in; i++ {
			h.a[i*rank+j] = float32(scale * u.At(i, j))
		}
		for o := 0; o < out; o++ {
			h.b[j*out+o] = float32(scale * v.At(o, j))
		}
	}
	return h
}

// randomizedFactors is the randomized SVD of Halko, Martinsson and Tropp
// (2011, algorithms 4.4 and 5.1) applied to M = W^T [in, out] with a sketch of
// width l. The thin matrices live on the GPU transposed, one sketch column per
// row ([l, in] or [l, out]), so every product with W is a GEMM with W as its B
// operand, which may be bf16:
//
//	Y^T = Omega^T W                    (Y = W^T Omega, Omega Gaussian [out, l])
//	repeat q times: Z^T = Y^T W^T, then Y^T = Z^T W, orthonormalising after each
//	Bs = Q^T W^T = Q^T M               ([l, out]; small SVD on the host)
//	U = Q U_b.
//
// Orthonormalisation is an LQ factorisation of the downloaded [l, n] matrix on
// the host (its rows span the sketch), which is cheap because l is small.
func randomizedFactors(ctx context.Context, dev *gpu.Device, lin *model.Linear, rank, l, iterations int, rng *rand.Rand) (hostFactors, error) {
	out, in := lin.Out, lin.In
	omega := make([]float32, l*out)
	for i := range omega {
		omega[i] = float32(rng.NormFloat64())
	}
	var tensors []*gpu.Tensor
	defer func() {
		for _, t := range tensors {
			t.Release()
		}
	}()
	alloc := func(label string, rows, cols int) (*gpu.Tensor, error) {
		t, err := dev.NewTensor(gpu.F32, label, rows, cols)
		if err == nil {
			tensors = append(tensors, t)
		}
		return t, err
	}
	wide, err := alloc("svd sketch [l, out]", l, out) // Omega^T, Z^T and finally Bs
	if err != nil {
		return hostFactors{}, err
	}
	if err := wide.Upload(omega); err != nil {
		return hostFactors{}, err
	}
	narrow, err := alloc("svd sketch [l, in]", l, in) // Y^T, then Q^T
	if err != nil {
		return hostFactors{}, err
	}
	rec := dev.NewRecorder()
	defer rec.Release()

	// run records one product, submits it and orthonormalises its result.
	run := func(product func() error, result *gpu.Tensor, cols int) ([]float64, error) {
		if err := product(); err != nil {
			return nil, err
		}
		if err := rec.Submit(); err != nil {
			return nil, err
		}
		return orthonormalizeOnGPU(ctx, result, l, cols)
	}
	timesW := func() error { return multiplyW(rec, lin, wide, narrow, l) }
	timesWT := func() error { return multiplyWT(rec, lin, narrow, wide, l) }

	qt, err := run(timesW, narrow, in)
	if err != nil {
		return hostFactors{}, err
	}
	for range iterations {
		if _, err := run(timesWT, wide, out); err != nil {
			return hostFactors{}, err
		}
		if qt, err = run(timesW, narrow, in); err != nil {
			return hostFactors{}, err
		}
	}
	if err := timesWT(); err != nil {
		return hostFactors{}, err
	}
	if err := rec.Submit(); err != nil {
		return hostFactors{}, err
	}
	bs, err := wide.Download(ctx)
	if err != nil {
		return hostFactors{}, err
	}
	var svd mat.SVD
	if !svd.Factorize(mat.NewDense(l, out, widen(bs)), mat.SVDThin) {
		return hostFactors{}, errors.New("the SVD of the sketch did not converge")
	}
	var ub, v, u mat.Dense
	svd.UTo(&ub) // [l, l]
	svd.VTo(&v)  // [out, l]
	u.Mul(mat.NewDense(l, in, qt).T(), &ub)
	return splitFactors(&u, svd.Values(nil), &v, rank), nil
}

// weightRows views rows [r0, r0+n) of a projection's weight. Weights larger
// than a storage binding are multiplied in Linear.BlockRows blocks.
func weightRows(lin *model.Linear, r0, n int) *gpu.Tensor {
	w := lin.W
	return &gpu.Tensor{Buf: w.Buf, Offset: w.Offset + w.DType.Bytes(r0*lin.In), Shape: []int{n, lin.In}, DType: w.DType}
}

// blockRows is the number of weight rows one GEMM may bind.
func blockRows(lin *model.Linear) int {
	if lin.BlockRows <= 0 {
		return lin.Out
	}
	return lin.BlockRows
}

// columnView views columns [c0, c0+n) of a row-major [rows, width] f32 tensor,
// to be used with leading dimension width.
func columnView(t *gpu.Tensor, rows, width, c0, n int) *gpu.Tensor {
	return &gpu.Tensor{Buf: t.Buf, Offset: t.Offset + uint64(4*c0), Shape: []int{(rows-1)*width + n}, DType: gpu.F32}
}

// multiplyW records dst [l, in] = src [l, out] W, summing over blocks of W's rows.
func multiplyW(rec *gpu.Recorder, lin *model.Linear, src, dst *gpu.Tensor, l int) error {
	block := blockRows(lin)
	for r0 := 0; r0 < lin.Out; r0 += block {
		n := min(block, lin.Out-r0)
		var beta float32
		if r0 > 0 {
			beta = 1
		}
		err := gpu.Gemm(rec, gpu.GemmArgs{A: columnView(src, l, lin.Out, r0, n), B: weightRows(lin, r0, n), C: dst,
			M: l, N: lin.In, K: n, LDA: lin.Out, LDB: lin.In, LDC: lin.In, Beta: beta})
		if err != nil {
			return fmt.Errorf("sketch product with W: %w", err)
		}
	}
	return nil
}

// multiplyWT records dst [l, out] = src [l, in] W^T, one block of W's rows
// (columns of dst) at a time.
func multiplyWT(rec *gpu.Recorder, lin *model.Linear, src, dst *gpu.Tensor, l int) error {
	block := blockRows(lin)
	for r0 := 0; r0 < lin.Out; r0 += block {
		n := min(block, lin.Out-r0)
		err := gpu.Gemm(rec, gpu.GemmArgs{A: src, B: weightRows(lin, r0, n), C: columnView(dst, l, lin.Out, r0, n),
			BTrans: true, M: l, N: n, K: lin.In, LDA: lin.In, LDB: lin.In, LDC: lin.Out})
		if err != nil {
			return fmt.Errorf("sketch product with W^T: %w", err)
		}
	}
	return nil
}

// orthonormalizeOnGPU downloads the [rows, cols] tensor t (rows <= cols),
// replaces its rows by an orthonormal basis of their span, uploads the result
// into t and returns it in float64.
func orthonormalizeOnGPU(ctx context.Context, t *gpu.Tensor, rows, cols int) ([]float64, error) {
	v, err := t.Download(ctx)
	if err != nil {
		return nil, err
	}
	if !allFinite(v) {
		return nil, errors.New("the sketch is not finite (does the weight hold NaN or Inf?)")
	}
	q := widen(v)
	orthonormalizeRows(q, rows, cols)
	for i, x := range q {
		v[i] = float32(x)
	}
	if err := t.Upload(v); err != nil {
		return nil, err
	}
	return q, nil
}

// orthonormalizeRows overwrites the row-major [rows, cols] matrix a (rows <=
// cols) with the Q of its LQ factorisation a = L Q, whose rows are orthonormal
// and span the rows of a. Householder reflections keep it orthonormal to
// working precision even when the sketch is nearly rank-deficient.
func orthonormalizeRows(a []float64, rows, cols int) {
	g := blas64.General{Rows: rows, Cols: cols, Stride: cols, Data: a}
	tau := make([]float64, rows)
	query := []float64{0}
	lapack64.Gelqf(g, tau, query, -1)
	lwork := max(int(query[0]), rows)
	lapack64.Orglq(g, tau, query, -1)
	lwork = max(lwork, int(query[0]))
	work := make([]float64, lwork)
	lapack64.Gelqf(g, tau, work, lwork)
	lapack64.Orglq(g, tau, work, lwork)
}

func widen(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

func allFinite(v []float32) bool {
	for _, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return false
		}
	}
	return true
}

// ProgressBar returns a progress callback (for EstimateOptions.Progress) that
// draws a text bar of width cells on w, redrawn in place with a carriage
// return, e.g. "SVD factors [########............]  8/20", and ends the line
// when done reaches total.
func ProgressBar(w io.Writer, label string, width int) func(done, total int) {
	width = max(width, 1)
	return func(done, total int) {
		if total <= 0 {
			return
		}
		done = min(max(done, 0), total)
		filled := done * width / total
		digits := len(strconv.Itoa(total))
		fmt.Fprintf(w, "\r%s [%s%s] %*d/%d", label, strings.Repeat("#", filled), strings.Repeat(".", width-filled), digits, done, total)
		if done == total {
			fmt.Fprintln(w)
		}
	}
}
