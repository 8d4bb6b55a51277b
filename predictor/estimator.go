package predictor

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
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
	"time"

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

// Defaults of EstimateOptions' randomized SVD, chosen for the flat spectra of
// real LLM weights. With the former 8 extra columns and 2 power iterations, a
// rank-8 estimate of a 1024 x 4096 weight with singular values i^-0.2 kept
// only 76-84 % of the exact SVD's top-25 % channels (3 seeds, measured); with
// a 32-column sketch (r = 8) and iterations until the top-r singular values
// settle to 1e-3 (about 6 iterations there) it keeps 98.8-99.6 %, and of a
// 256 x 1024 one 98.4-100 % (8 seeds; the former settings 75-84 %). A
// tolerance of 1e-4 reaches 99.6-100 % for about two more iterations.
// Decaying spectra settle after the first iteration and cost fewer passes
// than before.
//
// Cost: each power iteration is two GEMM passes over W (W^T then W, each
// 2 l out in FLOPs, for l = rank + oversampling sketch columns), on top of the
// two passes every estimate makes; the convergence test reuses the LQ
// factorisation of the orthonormalisation and adds no GEMM. The defaults thus
// cost up to 2 + 2 x 10 = 22 passes of width 32 instead of 6 of width 16. For
// the small widths involved a pass is bound by reading W, so the width costs
// little and a pass reads the weight once: an 8B model (about 9 GB of gate,
// up, q, k and v weights) reads 120-200 GB on a cold start, paid once, since
// the factors are cached.
const (
	DefaultOversampling    = 24
	DefaultPowerIterations = 10
	DefaultPowerTolerance  = 1e-3
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
	// PowerIterations is the most power iterations of the randomized SVD; 0
	// means DefaultPowerIterations, a negative value none.
	PowerIterations int
	// PowerTolerance stops the power iterations early, once no estimate of
	// the top-rank singular values moved by more than this fraction of itself
	// in the last iteration (those estimates converge from below, faster than
	// the subspace, which is why the tolerance is tight). 0 means
	// DefaultPowerTolerance; a negative value always runs PowerIterations.
	PowerTolerance float64
	// Seed of the Gaussian test matrices (each projection draws its own stream
	// from Seed, its layer and its projection, so results do not depend on
	// which other projections are estimated).
	Seed uint64
	// Progress, when set, is called with the number of projections factored so
	// far and the total, starting with (0, total). It is not called at all
	// when every factor comes from the cache.
	Progress func(done, total int)
	// Warnings receives non-fatal problems: an unreadable cache file that is
	// rebuilt, a cache file that cannot be written, a checkpoint file that
	// changed since the model was loaded. nil means os.Stderr.
	Warnings io.Writer
	// VerifyContent also hashes the targets' weights (read back from the GPU)
	// and recomputes the factors unless the hash matches the one stored in
	// the cache file. Without it a model loaded from files (model.Model
	// Sources) is identified by its checkpoint files' paths, sizes,
	// modification times and safetensors headers, which costs no weight
	// read; content that changed with all of those kept (a copy that
	// preserves the time stamp of a file of the same size and layout) is then
	// not noticed. Models built in memory are always identified by content.
	VerifyContent bool
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

// powerTolerance is the early-stopping tolerance; -1 (for every negative
// value, so that they share cache keys) never stops early.
func (o EstimateOptions) powerTolerance() float64 {
	switch {
	case o.PowerTolerance == 0:
		return DefaultPowerTolerance
	case o.PowerTolerance < 0:
		return -1
	}
	return o.PowerTolerance
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
	// cached: the factors are in the cache file (read from it, or written).
	cached  bool
	keyedBy CacheKeySource
}

// CacheKeySource says what identified the model's weights in the cache key.
type CacheKeySource int

const (
	// CacheKeyNone: no cache was used (EstimateOptions.NoCache).
	CacheKeyNone CacheKeySource = iota
	// CacheKeyFiles: the checkpoint files the model was loaded from (path,
	// size, modification time, safetensors header); no weight was read.
	CacheKeyFiles
	// CacheKeyContent: a hash of the weights as the GPU holds them.
	CacheKeyContent
)

func (k CacheKeySource) String() string {
	switch k {
	case CacheKeyNone:
		return "none"
	case CacheKeyFiles:
		return "checkpoint files"
	case CacheKeyContent:
		return "weight content"
	}
	return fmt.Sprintf("CacheKeySource(%d)", int(k))
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

// FromCache reports whether the factors were read from the cache file (a
// cache hit), for the caller to log.
func (e *Estimator) FromCache() bool { return e.fromCache }

// Cached reports whether the cache file holds the factors: read from it, or
// written to it (false when writing failed, which Estimate only warns about).
func (e *Estimator) Cached() bool { return e.cached }

// CacheKeyedBy says what identified the weights in the cache key: the
// checkpoint files, or (models built in memory, or files that changed since
// the model was loaded) the weights' content.
func (e *Estimator) CacheKeyedBy() CacheKeySource { return e.keyedBy }

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
// The cache file, in opts.CacheDir, is named by a SHA-256 key of the targets'
// names, dtypes and shapes, the rank, the method with its parameters, and
// what identifies the weights: for a model loaded from files (m.Sources), the
// files' absolute paths, sizes, modification times and safetensors headers,
// so that a warm start reads no weight; otherwise (a model built in memory,
// or a checkpoint file that changed since the model was loaded) the weights'
// bytes read back from the GPU. The file also records the hash of the
// weights' bytes, which opts.VerifyContent checks. A cache file that cannot be
// used (truncated, corrupt, wrong tensors, other weights) is reported on
// opts.Warnings, recomputed and overwritten; failing to write the cache is
// also only a warning, since the factors themselves are fine. Whether the
// cache was hit is reported by the result's FromCache, CachePath and
// CacheKeyedBy.
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
	e.keyedBy = key.source
	e.cachePath = filepath.Join(dir, fmt.Sprintf("svd-r%d-%s.safetensors", rank, key.name))

	host, storedContent, err := readCache(e.cachePath, key.name, m, targets, rank)
	switch {
	case err == nil:
		e.fromCache = true
	case errors.Is(err, fs.ErrNotExist):
		// A plain miss.
	default:
		fmt.Fprintf(opts.warnings(), "warning: ignoring an unusable SVD cache file: %v; recomputing it\n", err)
	}
	content := key.content // "" until hashed
	if e.fromCache && opts.VerifyContent && key.source == CacheKeyFiles {
		if content, err = contentHash(ctx, m, targets); err != nil {
			return nil, err
		}
		if content != storedContent {
			fmt.Fprintf(opts.warnings(), "warning: the SVD cache file %s was computed from other weights than the model holds (a checkpoint file changed but kept its size, modification time and header); recomputing it\n", e.cachePath)
			e.fromCache = false
		}
	}
	if !e.fromCache {
		if host, err = computeAll(ctx, dev, m, targets, rank, opts); err != nil {
			return nil, err
		}
		if content == "" {
			if content, err = contentHash(ctx, m, targets); err != nil {
				return nil, err
			}
		}
		if err := writeCache(e.cachePath, key.name, content, m, targets, rank, host); err != nil {
			fmt.Fprintf(opts.warnings(), "warning: the SVD factors could not be cached: %v\n", err)
		} else {
			e.cached = true
		}
	} else {
		e.cached = true
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
	if math.IsNaN(opts.PowerTolerance) {
		return nil, errors.New("svd estimate: the power iteration tolerance is NaN")
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
			h, _, err = randomizedFactors(ctx, dev, lin, rank, opts.sketchWidth(rank, lin.Out, lin.In), opts.powerIterations(), opts.powerTolerance(), rng)
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
	if lin.W.DType == gpu.Quantized { // the factors come from the dequantized weight
		f32, err := lin.W.Download(ctx)
		if err != nil {
			return nil, err
		}
		return float64s(f32), nil
	}
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
	return float64s(f32), nil
}

// weightFormat names a weight's storage for cache keys: the dtype, and a
// quantized weight's format too (4 and 8 bits of one checkpoint differ).
func weightFormat(w *gpu.Tensor) string {
	if w.DType == gpu.Quantized && w.Affine != nil {
		return w.DType.String() + " " + w.Affine.String()
	}
	return w.DType.String()
}

func float64s(f32 []float32) []float64 {
	out := make([]float64, len(f32))
	for i, v := range f32 {
		out[i] = float64(v)
	}
	return out
}

// cacheFormat names the cache layout and algorithm; changing either changes
// every key, so stale files are never read.
const cacheFormat = "sparselora-svd-v2"

// maxIndexBytes bounds a checkpoint index file hashed into the key (real ones
// are tens of kilobytes).
const maxIndexBytes = 64 << 20

// maxHeaderBytes is the safetensors format's limit on a header.
const maxHeaderBytes = 100_000_000

// estimateKey names a cache file.
type estimateKey struct {
	name   string // hex SHA-256
	source CacheKeySource
	// content is the hash of the weights' bytes when the key was built from
	// them, "" otherwise.
	content string
}

// cacheKey hashes what determines the factors: the format, rank, for each
// target its name, method (with the randomized SVD's parameters), dtype and
// shape, and what identifies the weights: the checkpoint files the model was
// loaded from when they are unchanged, else the weights' bytes.
func cacheKey(ctx context.Context, m *model.Model, targets []Target, rank int, opts EstimateOptions) (estimateKey, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\nrank=%d\n", cacheFormat, rank)
	for _, t := range targets {
		lin := m.Layers[t.Layer].Proj[t.Proj]
		fmt.Fprintf(h, "%s %s %dx%d %s\n", t.Name(), methodDescription(opts, rank, lin), lin.Out, lin.In, weightFormat(lin.W))
	}
	if len(m.Sources) > 0 {
		files := sha256.New()
		err := hashSources(files, m.Sources)
		if err == nil {
			fmt.Fprintf(h, "files %x\n", files.Sum(nil))
			return estimateKey{name: hex.EncodeToString(h.Sum(nil)), source: CacheKeyFiles}, nil
		}
		fmt.Fprintf(opts.warnings(), "warning: %v; keying the SVD cache by the weights' content instead\n", err)
	}
	content, err := contentHash(ctx, m, targets)
	if err != nil {
		return estimateKey{}, err
	}
	fmt.Fprintf(h, "content %s\n", content)
	return estimateKey{name: hex.EncodeToString(h.Sum(nil)), source: CacheKeyContent, content: content}, nil
}

// hashSources writes the identity of the checkpoint files to h: each one's
// absolute path, size, modification time and, for a safetensors file, its
// header (tensor names, dtypes, shapes, offsets and metadata; the tensor data
// is not read), for the index file its whole text. It fails, naming the file,
// when a file cannot be read or no longer has the size and modification time
// it had when the model was loaded: the GPU then may hold other weights than
// the file describes.
func hashSources(h io.Writer, sources []model.SourceFile) error {
	for _, src := range slices.SortedFunc(slices.Values(sources), func(a, b model.SourceFile) int { return strings.Compare(a.Path, b.Path) }) {
		st, err := os.Stat(src.Path)
		if err != nil {
			return fmt.Errorf("checkpoint file %s: %w", src.Path, err)
		}
		if st.Size() != src.Size || !st.ModTime().Equal(src.ModTime) {
			return fmt.Errorf("checkpoint file %s changed since the model was loaded (size %d, modified %s; then %d, %s)",
				src.Path, st.Size(), st.ModTime().Format(time.RFC3339Nano), src.Size, src.ModTime.Format(time.RFC3339Nano))
		}
		fmt.Fprintf(h, "file %q size=%d mtime=%d\n", src.Path, src.Size, src.ModTime.UnixNano())
		var ident []byte
		if strings.EqualFold(filepath.Ext(src.Path), ".safetensors") {
			ident, err = readSafetensorsHeader(src.Path, src.Size)
		} else {
			ident, err = readSmallFile(src.Path, src.Size)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%d\n", len(ident))
		h.Write(ident)
	}
	return nil
}

// readSafetensorsHeader reads the 8-byte length and the JSON header of a
// safetensors file of the given size, and nothing of the tensor data.
func readSafetensorsHeader(path string, size int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint file %w", err)
	}
	defer f.Close()
	var length [8]byte
	if _, err := f.ReadAt(length[:], 0); err != nil {
		return nil, fmt.Errorf("checkpoint file %s: reading the header length: %w", path, err)
	}
	n := binary.LittleEndian.Uint64(length[:])
	if n > maxHeaderBytes || n > uint64(max(size-8, 0)) {
		return nil, fmt.Errorf("checkpoint file %s: header length %d does not fit the %d-byte file", path, n, size)
	}
	header := make([]byte, 8+n)
	copy(header, length[:])
	if _, err := f.ReadAt(header[8:], 8); err != nil {
		return nil, fmt.Errorf("checkpoint file %s: reading the %d-byte header: %w", path, n, err)
	}
	return header, nil
}

// readSmallFile reads a checkpoint index file.
func readSmallFile(path string, size int64) ([]byte, error) {
	if size > maxIndexBytes {
		return nil, fmt.Errorf("checkpoint file %s: %d bytes, more than the %d an index file may have", path, size, maxIndexBytes)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint file %w", err)
	}
	return b, nil
}

// contentHash is the hex SHA-256 of the targets' names and stored weight
// bytes, read back from the GPU (so it follows what the model really holds,
// whatever checkpoint format it came from).
func contentHash(ctx context.Context, m *model.Model, targets []Target) (string, error) {
	h := sha256.New()
	for _, t := range targets {
		lin := m.Layers[t.Layer].Proj[t.Proj]
		fmt.Fprintf(h, "%s %dx%d %s\n", t.Name(), lin.Out, lin.In, weightFormat(lin.W))
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
	return fmt.Sprintf("randomized(sketch=%d,power<=%d,tolerance=%g,seed=%d)", opts.sketchWidth(rank, lin.Out, lin.In), opts.powerIterations(), opts.powerTolerance(), opts.Seed)
}

func factorName(t Target, which string) string { return "svd." + t.Name() + "." + which }

// readCache loads the factors of a cache file, checking that it is the file
// for key and holds every target's factors with the right shapes and finite
// values, and returns them with the content hash of the weights they were
// computed from. A missing file gives an error wrapping fs.ErrNotExist; every
// other error names the file.
func readCache(path, key string, m *model.Model, targets []Target, rank int) (map[Target]hostFactors, string, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, "", err // an *fs.PathError, which names the file
	}
	f, err := safetensors.Open(path)
	if err != nil {
		// safetensors errors name the file. One wrapping fs.ErrNotExist (the
		// file vanished since Stat) is still reported, not taken for a miss.
		return nil, "", corruptCache{err}
	}
	defer f.Close()
	md := f.Metadata()
	if md["format"] != cacheFormat || md["key"] != key || md["rank"] != strconv.Itoa(rank) {
		return nil, "", corruptCache{fmt.Errorf("%s: its metadata (format %q, rank %q, key %q) does not match its name", path, md["format"], md["rank"], md["key"])}
	}
	if n := len(f.Names()); n != 2*len(targets) {
		return nil, "", corruptCache{fmt.Errorf("%s: %d tensors, want %d", path, n, 2*len(targets))}
	}
	host := make(map[Target]hostFactors, len(targets))
	for _, t := range targets {
		lin := m.Layers[t.Layer].Proj[t.Proj]
		a, err := readCachedTensor(f, factorName(t, "A"), lin.In, rank)
		if err != nil {
			return nil, "", corruptCache{err}
		}
		b, err := readCachedTensor(f, factorName(t, "B"), rank, lin.Out)
		if err != nil {
			return nil, "", corruptCache{err}
		}
		host[t] = hostFactors{a: a, b: b}
	}
	return host, md["content"], nil
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

// writeCache stores the factors and the content hash of the weights they come
// from atomically (safetensors.WriteFile writes a temporary file and renames
// it), so concurrent runs and crashes never leave a torn file under the final
// name.
func writeCache(path, key, content string, m *model.Model, targets []Target, rank int, host map[Target]hostFactors) error {
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
		"format": cacheFormat, "key": key, "rank": strconv.Itoa(rank), "content": content,
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
//	Y^T = Omega^T W, Q^T = orth(Y^T)     (Y = W^T Omega, Omega Gaussian [out, l])
//	loop:
//	  Bs = Q^T W^T = Q^T M               ([l, out]; its singular values estimate M's)
//	  stop after maxIterations, or once the top-rank estimates moved by at
//	  most tolerance (relative) since the previous loop
//	  Z^T = orth(Bs), Q^T = orth(Z^T W)  (one power iteration)
//	SVD of the last Bs on the host: Bs = U_b S V^T, U = Q U_b.
//
// Orthonormalisation is an LQ factorisation of the downloaded [l, n] matrix on
// the host (its rows span the sketch), which is cheap because l is small; its
// l x l factor L has Bs's singular values, so the convergence test costs no
// product with W. The power iterations run until convergence on flat spectra,
// where the sketch's top subspace is slow to settle (see the defaults'
// comment), and stop after one on decaying ones. It returns the number of
// power iterations made.
func randomizedFactors(ctx context.Context, dev *gpu.Device, lin *model.Linear, rank, l, maxIterations int, tolerance float64, rng *rand.Rand) (hostFactors, int, error) {
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
	wide, err := alloc("svd sketch [l, out]", l, out) // Omega^T, then Bs or Z^T
	if err != nil {
		return hostFactors{}, 0, err
	}
	if err := wide.Upload(omega); err != nil {
		return hostFactors{}, 0, err
	}
	narrow, err := alloc("svd sketch [l, in]", l, in) // Y^T, then Q^T
	if err != nil {
		return hostFactors{}, 0, err
	}
	rec := dev.NewRecorder()
	defer rec.Release()

	// product records one product and downloads its result.
	product := func(record func() error, result *gpu.Tensor) ([]float32, error) {
		if err := record(); err != nil {
			return nil, err
		}
		if err := rec.Submit(); err != nil {
			return nil, err
		}
		v, err := result.Download(ctx)
		if err != nil {
			return nil, err
		}
		if !allFinite(v) {
			return nil, errors.New("the sketch is not finite (does the weight hold NaN or Inf?)")
		}
		return v, nil
	}
	// orthonormalize replaces the rows of result (held in v) by an
	// orthonormal basis of their span, on the host and on the GPU, and
	// returns the basis and v's singular values.
	orthonormalize := func(v []float32, result *gpu.Tensor, cols int) ([]float64, []float64, error) {
		q := widen(v)
		sv := orthonormalizeRows(q, l, cols)
		narrowed := make([]float32, len(q))
		for i, x := range q {
			narrowed[i] = float32(x)
		}
		return q, sv, result.Upload(narrowed)
	}
	timesW := func() error { return multiplyW(rec, lin, wide, narrow, l) }
	timesWT := func() error { return multiplyWT(rec, lin, narrow, wide, l) }

	y, err := product(timesW, narrow)
	if err != nil {
		return hostFactors{}, 0, err
	}
	qt, _, err := orthonormalize(y, narrow, in)
	if err != nil {
		return hostFactors{}, 0, err
	}
	var bs []float32
	var previous []float64
	iterations := 0
	for {
		if bs, err = product(timesWT, wide); err != nil {
			return hostFactors{}, 0, err
		}
		if iterations == maxIterations {
			break
		}
		_, sv, err := orthonormalize(bs, wide, out)
		if err != nil {
			return hostFactors{}, 0, err
		}
		if previous != nil && settled(previous, sv, rank, tolerance) {
			// bs is untouched: orthonormalize worked on a copy, and the GPU's
			// Z^T is not needed any more.
			break
		}
		previous = sv
		if y, err = product(timesW, narrow); err != nil {
			return hostFactors{}, 0, err
		}
		if qt, _, err = orthonormalize(y, narrow, in); err != nil {
			return hostFactors{}, 0, err
		}
		iterations++
	}
	var svd mat.SVD
	if !svd.Factorize(mat.NewDense(l, out, widen(bs)), mat.SVDThin) {
		return hostFactors{}, 0, errors.New("the SVD of the sketch did not converge")
	}
	var ub, v, u mat.Dense
	svd.UTo(&ub) // [l, l]
	svd.VTo(&v)  // [out, l]
	u.Mul(mat.NewDense(l, in, qt).T(), &ub)
	return splitFactors(&u, svd.Values(nil), &v, rank), iterations, nil
}

// settleFloor is the fraction of the largest singular value below which an
// estimate is measured against that floor instead of itself: such components
// barely move the channel scores, and those of a rank-deficient weight are
// rounding noise that never settles relative to itself.
const settleFloor = 1e-3

// settled reports whether each of the top rank singular value estimates moved
// by at most tolerance times its value (at least settleFloor times the
// largest) between two iterations. A negative tolerance never settles.
func settled(previous, current []float64, rank int, tolerance float64) bool {
	if tolerance < 0 || len(current) == 0 {
		return false
	}
	floor := settleFloor * current[0]
	for i := range min(rank, len(current), len(previous)) {
		if !(math.Abs(current[i]-previous[i]) <= tolerance*max(current[i], floor)) {
			return false
		}
	}
	return true
}

// weightRows views rows [r0, r0+n) of a projection's weight. Weights larger
// than a storage binding are multiplied in Linear.BlockRows blocks.
func weightRows(lin *model.Linear, r0, n int) (*gpu.Tensor, error) {
	return lin.W.Rows(r0, n) // whole rows of a quantized weight too (codes, scales and biases)
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
		rows, err := weightRows(lin, r0, n)
		if err != nil {
			return fmt.Errorf("sketch product with W: %w", err)
		}
		err = gpu.Gemm(rec, gpu.GemmArgs{A: columnView(src, l, lin.Out, r0, n), B: rows, C: dst,
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
		rows, err := weightRows(lin, r0, n)
		if err != nil {
			return fmt.Errorf("sketch product with W^T: %w", err)
		}
		err = gpu.Gemm(rec, gpu.GemmArgs{A: src, B: rows, C: columnView(dst, l, lin.Out, r0, n),
			BTrans: true, M: l, N: n, K: lin.In, LDA: lin.In, LDB: lin.In, LDC: lin.Out})
		if err != nil {
			return fmt.Errorf("sketch product with W^T: %w", err)
		}
	}
	return nil
}

// orthonormalizeRows overwrites the row-major [rows, cols] matrix a (rows <=
// cols) with the Q of its LQ factorisation a = L Q, whose rows are orthonormal
// and span the rows of a, and returns the singular values of a (those of L),
// largest first. Householder reflections keep Q orthonormal to working
// precision even when the sketch is nearly rank-deficient.
func orthonormalizeRows(a []float64, rows, cols int) []float64 {
	g := blas64.General{Rows: rows, Cols: cols, Stride: cols, Data: a}
	tau := make([]float64, rows)
	query := []float64{0}
	lapack64.Gelqf(g, tau, query, -1)
	lwork := max(int(query[0]), rows)
	lapack64.Orglq(g, tau, query, -1)
	lwork = max(lwork, int(query[0]))
	work := make([]float64, lwork)
	lapack64.Gelqf(g, tau, work, lwork)
	l := mat.NewDense(rows, rows, nil)
	for i := range rows {
		for j := 0; j <= i; j++ {
			l.Set(i, j, a[i*cols+j])
		}
	}
	lapack64.Orglq(g, tau, work, lwork)
	var svd mat.SVD
	if !svd.Factorize(l, mat.SVDNone) {
		// Only the convergence test reads the values; NaN never settles.
		return slices.Repeat([]float64{math.NaN()}, rows)
	}
	return svd.Values(nil)
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
