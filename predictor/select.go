// This file selects, per batch and layer, the channels that the frozen
// projections compute on context tokens (SPEC 4.2-4.4, 4.9), entirely on the
// GPU (shaders/sparse_select.wgsl, with gpu.Gemm for attention's x A
// products): the selection is recorded into the step's Recorder and written as
// index lists that the sparse GEMMs read there, so no layer waits for the host.

package predictor

import (
	"errors"
	"fmt"
	"math"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model"
)

// LayerFactors are the rank-r factors of one layer's frozen projections that
// the selection reads: gate and up for a sparse FFN, q, k and v for sparse
// attention. The others may be nil.
type LayerFactors struct {
	Gate, Up, Q, K, V *Factors
}

// EstimatorFactors adapts an Estimator to NewSelector's factors argument (a nil
// Estimator has no factors).
func EstimatorFactors(e *Estimator) func(layer int) (LayerFactors, bool) {
	return func(layer int) (LayerFactors, bool) {
		var lf LayerFactors
		if e == nil {
			return lf, false
		}
		found := false
		for _, slot := range []struct {
			proj model.Projection
			dst  **Factors
		}{
			{model.ProjGate, &lf.Gate}, {model.ProjUp, &lf.Up},
			{model.ProjQ, &lf.Q}, {model.ProjK, &lf.K}, {model.ProjV, &lf.V},
		} {
			if f, ok := e.Factors(layer, slot.proj); ok {
				*slot.dst = f
				found = true
			}
		}
		return lf, found
	}
}

// SelectOptions switch on the reference implementation's behaviours (SPEC 4.9)
// to reproduce the authors' numbers; all are off by default.
type SelectOptions struct {
	// AuthorsGQA pairs query channel j with kv channel j mod KV*hd when
	// averaging the query norms, emits the q list as the authors' predictor
	// does (kv channel c keeps query channels c*G + g, g < G; spft/modules/pred.py
	// QKVOFusedGQAPredictor), and gives o_proj the v list unchanged. Without GQA
	// (G = 1) this is the same selection as the default.
	AuthorsGQA bool
	// TruncateK counts kept channels as int(n*(1-s)) (still at least 1) instead
	// of SPEC 4.4's floor(n*(1-s) + 1e-6): 15 instead of 16 for n=160, s=0.9.
	TruncateK bool
	// UnmaskedMean averages the FFN input over all Seq positions of a row,
	// padding included, as the reference's seq_avg does. Attention norms
	// (SPEC 4.3) have no mean and always leave padding out.
	UnmaskedMean bool
	// SparseScoredTokens runs scored tokens on the kept channels too: a table
	// with skip_output_tokens: false (SparsityConfig.SkipOutputTokens false).
	// Otherwise they run dense (SPEC 4.5).
	SparseScoredTokens bool
}

// K is the number of the n channels kept at sparsity s (SPEC 4.4):
// max(1, floor(n*(1-s) + 1e-6)), or with truncate the reference's
// max(1, int(n*(1-s))); every channel when s <= 0.
func K(n int, s float64, truncate bool) int {
	if !truncate || s <= 0 {
		return keptChannels(n, s)
	}
	return min(n, max(1, int(float64(n)*(1-s))))
}

const (
	selectShader = "sparse_select.wgsl"
	// selectWorkgroupSize is WORKGROUP_SIZE: channels per workgroup, and the
	// single compaction workgroup's width (a power of two for its prefix sum).
	selectWorkgroupSize = 256
	// selectChunkTokens is CHUNK_TOKENS: tokens per partial column sum, so that
	// long batches spread the norms over more workgroups than channels alone.
	selectChunkTokens = 256
	// selectTileFloats bounds the Z rows staged in workgroup memory (8 KiB),
	// half of WebGPU's guaranteed 16 KiB.
	selectTileFloats = 2048
	// MaxSelectRank is the largest factor rank the selection kernels take: each
	// invocation holds a column of B (two for the FFN) in registers.
	MaxSelectRank = 128
)

// selectOp values are the OP_* consts of sparse_select.wgsl.
type selectOp int

const (
	opMaskedMean selectOp = iota
	opRowProject
	opColumnSumSquares
	opFFNScores
	opAttentionScores
	opRank
	opCompact
)

func (op selectOp) String() string {
	return [...]string{"masked mean", "row projection", "column norms", "FFN scores", "attention scores", "rank", "compact"}[op]
}

// listMap values are the MAP_* modes of OP_COMPACT: how an output channel finds
// the keep flag it copies.
type listMap uint32

const (
	mapIdentity   listMap = iota
	mapGQA                // query/attention-output channel -> its kv channel (SPEC 4.3)
	mapGroupMajor         // j -> j / G, the reference's q list
)

// selectParams mirrors struct Params of sparse_select.wgsl.
type selectParams struct {
	n, rows, seq, width, tokens, chunks, k, group, headDim, mode uint32
	srcBase, src2Base, src3Base, factorABase, factorBBase        uint32
	wordsInBase, dstBase, dst2Base, wordsOutBase                 uint32
}

func (p selectParams) bytes() []byte {
	return gpu.PackParams(
		p.n, p.rows, p.seq, p.width, p.tokens, p.chunks, p.k, p.group, p.headDim, p.mode,
		p.srcBase, p.src2Base, p.src3Base, p.factorABase, p.factorBBase,
		p.wordsInBase, p.dstBase, p.dst2Base, p.wordsOutBase, math.Float32bits(1),
	)
}

// selectBindings are a dispatch's storage bindings 1-6; unset ones get a
// placeholder.
type selectBindings struct {
	src, factorA, factorB, wordsIn, dst, wordsOut gpu.Binding
}

// selectDims are the model sizes the selection needs.
type selectDims struct {
	hidden, intermediate  int
	heads, kvHeads        int
	headDim, group        int
	qChannels, kvChannels int // heads*hd and KV*hd
}

func newSelectDims(cfg *model.Config) (selectDims, error) {
	if cfg == nil {
		return selectDims{}, errors.New("predictor: NewSelector: nil model config")
	}
	d := selectDims{
		hidden: cfg.HiddenSize, intermediate: cfg.IntermediateSize,
		heads: cfg.NumAttentionHeads, kvHeads: cfg.NumKeyValueHeads, headDim: cfg.HeadDim,
	}
	if d.hidden <= 0 || d.intermediate <= 0 || d.heads <= 0 || d.kvHeads <= 0 || d.headDim <= 0 {
		return selectDims{}, fmt.Errorf("predictor: NewSelector: model sizes must be positive (hidden %d, intermediate %d, heads %d, kv heads %d, head dim %d)",
			d.hidden, d.intermediate, d.heads, d.kvHeads, d.headDim)
	}
	if d.heads%d.kvHeads != 0 {
		return selectDims{}, fmt.Errorf("predictor: NewSelector: %d kv heads do not divide %d attention heads", d.kvHeads, d.heads)
	}
	d.group = d.heads / d.kvHeads
	d.qChannels = d.heads * d.headDim
	d.kvChannels = d.kvHeads * d.headDim
	return d, nil
}

// mlpSelection is a sparse FFN layer's state: its factors, how many channels it
// keeps, and the scores and list it writes every batch.
type mlpSelection struct {
	gate, up *Factors
	keep     int
	scores   *gpu.Tensor // [I]
	list     gpu.IndexList
}

// attentionSelection is a sparse attention layer's state. scores holds s_qk
// then nv ([2, KV*hd]); lists holds the q, k, v and o lists one after another.
type attentionSelection struct {
	q, k, v  *Factors
	keep     int // kv channels
	scores   *gpu.Tensor
	lists    *gpu.Buffer
	qList    gpu.IndexList
	kList    gpu.IndexList
	vList    gpu.IndexList
	oList    gpu.IndexList
	qkScores *gpu.Tensor // views of scores
	vScores  *gpu.Tensor
}

// Selector chooses each batch's kept channels on the GPU; it implements
// model.ChannelSelector. Calls record into the caller's Recorder and only read
// the Selector's host state. A layer's lists and scores live in buffers the
// Selector owns: since the queue runs work in submission order, they hold the
// layer's selection for everything recorded after it and before the layer's
// next selection, which overwrites them. Release frees it.
type Selector struct {
	dev       *gpu.Device
	dims      selectDims
	opts      SelectOptions
	maxTokens int
	maxRows   int
	maxRank   int
	mlp       []*mlpSelection       // per layer; nil when dense
	attention []*attentionSelection // per layer; nil when dense

	// Scratch shared by the layers, whose selections run one after another.
	xbar        *gpu.Tensor // [maxRows, H] row means
	projections *gpu.Buffer // three regions of projRegion floats: x A of q, k, v (gate, up)
	projRegion  int
	partials    *gpu.Buffer // partial column sums of q, k, v
	chunksMax   int
	flags       *gpu.Buffer // keep flags, one u32 per channel
	// Placeholders fill the bindings an op ignores: two, because one buffer
	// cannot be bound read-only and writable in the same dispatch.
	readPlaceholder, writePlaceholder *gpu.Buffer

	buffers []*gpu.Buffer // everything to release
}

var _ model.ChannelSelector = (*Selector)(nil)

// NewSelector allocates the selection of every layer whose sparsity is above
// zero: its lists (sized for all channels), scores and the scratch for batches
// of up to maxTokens tokens in up to maxRows sequences. factors returns the
// layer's rank-r factors (EstimatorFactors adapts an Estimator); it is called
// once per sparse layer here, and the tensors must stay alive while the
// Selector is used.
func NewSelector(dev *gpu.Device, cfg *model.Config, sparsity map[int]LayerSparsity,
	factors func(layer int) (LayerFactors, bool), maxTokens, maxRows int, opts SelectOptions) (*Selector, error) {
	if dev == nil {
		return nil, errors.New("predictor: NewSelector: nil device")
	}
	dims, err := newSelectDims(cfg)
	if err != nil {
		return nil, err
	}
	if maxTokens < 1 || maxRows < 1 {
		return nil, fmt.Errorf("predictor: NewSelector: maxTokens %d and maxRows %d must be positive", maxTokens, maxRows)
	}
	if uint64(maxTokens)*uint64(max(dims.hidden, dims.qChannels)) > math.MaxUint32 {
		return nil, fmt.Errorf("predictor: NewSelector: %d tokens of %d channels exceed the kernels' u32 indices", maxTokens, max(dims.hidden, dims.qChannels))
	}
	layers := cfg.NumHiddenLayers
	for layer, s := range sparsity {
		if layer < 0 || layer >= layers {
			return nil, fmt.Errorf("predictor: NewSelector: sparsity given for layer %d, but the model has layers 0..%d", layer, layers-1)
		}
		for _, v := range []struct {
			kind string
			s    float64
		}{{"mlp", s.MLP}, {"self_attn", s.Attention}} {
			if !(v.s >= 0 && v.s < 1) {
				return nil, fmt.Errorf("predictor: NewSelector: layers.%d.%s sparsity %v is outside [0, 1)", layer, v.kind, v.s)
			}
		}
	}
	sel := &Selector{
		dev: dev, dims: dims, opts: opts, maxTokens: maxTokens, maxRows: maxRows,
		mlp: make([]*mlpSelection, layers), attention: make([]*attentionSelection, layers),
	}
	ok := false
	defer func() {
		if !ok {
			sel.Release()
		}
	}()
	for layer := range layers {
		s := sparsity[layer]
		if s.MLP <= 0 && s.Attention <= 0 {
			continue
		}
		var lf LayerFactors
		if factors != nil {
			lf, _ = factors(layer)
		}
		if s.MLP > 0 {
			if sel.mlp[layer], err = sel.newMLPSelection(layer, s.MLP, lf); err != nil {
				return nil, err
			}
		}
		if s.Attention > 0 {
			if sel.attention[layer], err = sel.newAttentionSelection(layer, s.Attention, lf); err != nil {
				return nil, err
			}
		}
	}
	if err := sel.allocateScratch(); err != nil {
		return nil, err
	}
	ok = true
	return sel, nil
}

// checkFactors checks one projection's factors against its sizes.
func checkFactors(layer int, name string, f *Factors, in, out int) error {
	where := fmt.Sprintf("predictor: NewSelector: layer %d %s factors", layer, name)
	switch {
	case f == nil || f.A == nil || f.B == nil:
		return fmt.Errorf("%s are missing (the layer is sparse, so the estimator must factor it)", where)
	case f.Rank < 1 || f.Rank > MaxSelectRank:
		return fmt.Errorf("%s: rank %d is outside 1..%d", where, f.Rank, MaxSelectRank)
	case f.A.DType != gpu.F32 || f.B.DType != gpu.F32:
		return fmt.Errorf("%s: A is %s and B is %s, want f32", where, f.A.DType, f.B.DType)
	case len(f.A.Shape) != 2 || f.A.Shape[0] != in || f.A.Shape[1] != f.Rank:
		return fmt.Errorf("%s: A has shape %v, want [%d %d]", where, f.A.Shape, in, f.Rank)
	case len(f.B.Shape) != 2 || f.B.Shape[0] != f.Rank || f.B.Shape[1] != out:
		return fmt.Errorf("%s: B has shape %v, want [%d %d]", where, f.B.Shape, f.Rank, out)
	case f.A.Offset%4 != 0 || f.B.Offset%4 != 0:
		return fmt.Errorf("%s: tensor offsets must be multiples of 4 bytes", where)
	}
	return nil
}

func (s *Selector) newMLPSelection(layer int, sparsity float64, lf LayerFactors) (*mlpSelection, error) {
	d := s.dims
	if err := checkFactors(layer, "gate_proj", lf.Gate, d.hidden, d.intermediate); err != nil {
		return nil, err
	}
	if err := checkFactors(layer, "up_proj", lf.Up, d.hidden, d.intermediate); err != nil {
		return nil, err
	}
	if lf.Gate.Rank != lf.Up.Rank {
		return nil, fmt.Errorf("predictor: NewSelector: layer %d gate_proj rank %d differs from up_proj rank %d (one kernel reads both)",
			layer, lf.Gate.Rank, lf.Up.Rank)
	}
	m := &mlpSelection{gate: lf.Gate, up: lf.Up, keep: K(d.intermediate, sparsity, s.opts.TruncateK)}
	var err error
	if m.scores, err = s.newTensor(fmt.Sprintf("layer %d FFN channel scores", layer), d.intermediate); err != nil {
		return nil, err
	}
	if m.list.Buf, err = s.newBuffer(fmt.Sprintf("layer %d FFN channel list", layer), 1+d.intermediate); err != nil {
		return nil, err
	}
	m.list.Max = m.keep // the GEMMs' tiles fit the kept channels
	s.maxRank = max(s.maxRank, lf.Gate.Rank)
	return m, nil
}

func (s *Selector) newAttentionSelection(layer int, sparsity float64, lf LayerFactors) (*attentionSelection, error) {
	d := s.dims
	for _, p := range []struct {
		name string
		f    *Factors
		out  int
	}{{"q_proj", lf.Q, d.qChannels}, {"k_proj", lf.K, d.kvChannels}, {"v_proj", lf.V, d.kvChannels}} {
		if err := checkFactors(layer, p.name, p.f, d.hidden, p.out); err != nil {
			return nil, err
		}
		s.maxRank = max(s.maxRank, p.f.Rank)
	}
	a := &attentionSelection{q: lf.Q, k: lf.K, v: lf.V, keep: K(d.kvChannels, sparsity, s.opts.TruncateK)}
	var err error
	if a.scores, err = s.newTensor(fmt.Sprintf("layer %d attention channel scores", layer), 2, d.kvChannels); err != nil {
		return nil, err
	}
	a.qkScores = &gpu.Tensor{Buf: a.scores.Buf, Shape: []int{d.kvChannels}}
	a.vScores = &gpu.Tensor{Buf: a.scores.Buf, Offset: uint64(4 * d.kvChannels), Shape: []int{d.kvChannels}}
	// q, k, v, o: each a count and room for all its channels.
	sizes := []int{d.qChannels, d.kvChannels, d.kvChannels, d.qChannels}
	total := 0
	for _, n := range sizes {
		total += 1 + n
	}
	if a.lists, err = s.newBuffer(fmt.Sprintf("layer %d attention channel lists", layer), total); err != nil {
		return nil, err
	}
	offset := 0
	// At most keep kv channels, and the group's query or output channels of
	// each: the GEMMs' tiles fit these, not all channels.
	most := []int{a.keep * d.group, a.keep, a.keep, a.keep * d.group}
	for i, list := range []*gpu.IndexList{&a.qList, &a.kList, &a.vList, &a.oList} {
		*list = gpu.IndexList{Buf: a.lists, Offset: offset, Max: min(most[i], sizes[i])}
		offset += 1 + sizes[i]
	}
	return a, nil
}

func (s *Selector) newBuffer(label string, words int) (*gpu.Buffer, error) {
	b, err := s.dev.NewBuffer(uint64(4*max(words, 1)), label)
	if err != nil {
		return nil, fmt.Errorf("predictor: NewSelector: %w", err)
	}
	s.buffers = append(s.buffers, b)
	return b, nil
}

func (s *Selector) newTensor(label string, shape ...int) (*gpu.Tensor, error) {
	t := &gpu.Tensor{Shape: shape, DType: gpu.F32}
	b, err := s.newBuffer(label, t.Len())
	if err != nil {
		return nil, err
	}
	t.Buf = b
	return t, nil
}

// allocateScratch sizes the shared scratch for the sparse layers found.
func (s *Selector) allocateScratch() error {
	d := s.dims
	var err error
	if s.readPlaceholder, err = s.newBuffer("selection placeholder (read)", 4); err != nil {
		return err
	}
	if s.writePlaceholder, err = s.newBuffer("selection placeholder (write)", 4); err != nil {
		return err
	}
	anyMLP, anyAttention := false, false
	for layer := range s.mlp {
		anyMLP = anyMLP || s.mlp[layer] != nil
		anyAttention = anyAttention || s.attention[layer] != nil
	}
	if !anyMLP && !anyAttention {
		return nil
	}
	rows := 0
	if anyMLP {
		rows = s.maxRows
		if s.xbar, err = s.newTensor("selection row means", s.maxRows, d.hidden); err != nil {
			return err
		}
	}
	if anyAttention {
		rows = max(rows, s.maxTokens)
		s.chunksMax = (s.maxTokens + selectChunkTokens - 1) / selectChunkTokens
		if s.partials, err = s.newBuffer("selection partial column sums", s.chunksMax*(d.qChannels+2*d.kvChannels)); err != nil {
			return err
		}
	}
	s.projRegion = rows * s.maxRank
	if s.projections, err = s.newBuffer("selection low-rank projections", 3*s.projRegion); err != nil {
		return err
	}
	s.flags, err = s.newBuffer("selection keep flags", max(d.intermediate, d.qChannels))
	return err
}

// Release frees the Selector's buffers; the lists it returned become invalid.
// Releasing twice is harmless.
func (s *Selector) Release() {
	for _, b := range s.buffers {
		b.Release()
	}
	s.buffers = nil
}

// Scores are the last batch's channel scores of a layer: the FFN's [I]
// (SPEC 4.2) and attention's s_qk and nv ([KV*hd] each, SPEC 4.3); nil for a
// dense part. They are valid after the recorded selection has run.
func (s *Selector) Scores(layer int) (mlp, qk, v *gpu.Tensor) {
	if layer < 0 || layer >= len(s.mlp) {
		return nil, nil, nil
	}
	if m := s.mlp[layer]; m != nil {
		mlp = m.scores
	}
	if a := s.attention[layer]; a != nil {
		qk, v = a.qkScores, a.vScores
	}
	return mlp, qk, v
}

// KeptChannels is how many channels a layer keeps: FFN intermediate channels,
// and kv channels of K and V (Q and o_proj keep G times as many, or with
// AuthorsGQA o_proj as many as V). 0 means that part is dense.
func (s *Selector) KeptChannels(layer int) (mlp, attention int) {
	if layer < 0 || layer >= len(s.mlp) {
		return 0, 0
	}
	if m := s.mlp[layer]; m != nil {
		mlp = m.keep
	}
	if a := s.attention[layer]; a != nil {
		attention = a.keep
	}
	return mlp, attention
}

// MLP records the FFN selection of SPEC 4.2 from the post_attention_layernorm
// output x [Rows*Seq, H]: the row means over real tokens, their rank-r gate and
// up projections, score_j = ||SiLU(g) * u||_2 over the rows, and the top k
// channels as an ascending list (ties to the lower index). A dense layer
// SparseScoredTokens reports whether scored tokens run on the kept channels
// too (SelectOptions.SparseScoredTokens).
func (s *Selector) SparseScoredTokens() bool { return s.opts.SparseScoredTokens }

// returns nil.
func (s *Selector) MLP(rec *gpu.Recorder, layer int, x *gpu.Tensor, tokens *model.TokenSets) (*gpu.IndexList, error) {
	if layer < 0 || layer >= len(s.mlp) {
		return nil, fmt.Errorf("predictor: MLP selection: layer %d outside 0..%d", layer, len(s.mlp)-1)
	}
	m := s.mlp[layer]
	if m == nil {
		return nil, nil
	}
	fail := func(err error) (*gpu.IndexList, error) {
		return nil, fmt.Errorf("predictor: layer %d MLP selection: %w", layer, err)
	}
	batch, err := s.checkBatch(rec, x, tokens)
	if err != nil {
		return fail(err)
	}
	d := s.dims
	xView, xBase := x.View()
	maskView, maskBase := tokens.Mask.View()
	unmasked := uint32(0)
	if s.opts.UnmaskedMean {
		unmasked = 1
	}
	if err := s.dispatch(rec, opMaskedMean, 1,
		selectParams{rows: uint32(batch.rows), seq: uint32(batch.seq), width: uint32(d.hidden), mode: unmasked,
			srcBase: xBase, wordsInBase: maskBase},
		selectBindings{src: xView, wordsIn: maskView, dst: gpu.Bind(s.xbar.Buf)},
		groups(d.hidden), uint32(batch.rows)); err != nil {
		return fail(err)
	}
	// xbar A_g and xbar A_u by the compensated kernel rather than gpu.Gemm: the
	// FFN scores amplify their rounding errors (see sparse_select.wgsl).
	rank := m.gate.Rank
	for i, f := range []*Factors{m.gate, m.up} {
		aView, aBase := f.A.View()
		if err := s.dispatch(rec, opRowProject, rank,
			selectParams{rows: uint32(batch.rows), width: uint32(d.hidden),
				factorABase: aBase, dstBase: uint32(i * s.projRegion)},
			selectBindings{src: gpu.Bind(s.xbar.Buf), factorA: aView, dst: gpu.Bind(s.projections)},
			uint32(rank), uint32(batch.rows)); err != nil {
			return fail(err)
		}
	}
	gateB, gateBase := m.gate.B.View()
	upB, upBase := m.up.B.View()
	if err := s.dispatch(rec, opFFNScores, rank,
		selectParams{n: uint32(d.intermediate), rows: uint32(batch.rows),
			src2Base: uint32(s.projRegion), factorABase: gateBase, factorBBase: upBase},
		selectBindings{src: gpu.Bind(s.projections), factorA: gateB, factorB: upB, dst: m.scores.Binding()},
		groups(d.intermediate), 1); err != nil {
		return fail(err)
	}
	if err := s.selectTop(rec, m.scores.Buf, 0, d.intermediate, m.keep); err != nil {
		return fail(err)
	}
	if err := s.compact(rec, m.list, d.intermediate, mapIdentity); err != nil {
		return fail(err)
	}
	return &m.list, nil
}

// Attention records the attention selection of SPEC 4.3 from the
// input_layernorm output x [Rows*Seq, H]: the column norms of x A B for q, k
// and v over the real tokens, s_qk = (mean of each kv channel's G query norms)
// * nk, and the top k kv channels by s_qk (K) and by nv (V), ascending with
// ties to the lower index; Q keeps the G query channels of each kept K channel
// and O the G attention-output channels that read each kept V channel. A
// dense layer returns no lists.
func (s *Selector) Attention(rec *gpu.Recorder, layer int, x *gpu.Tensor, tokens *model.TokenSets) (model.AttentionChannels, error) {
	if layer < 0 || layer >= len(s.attention) {
		return model.AttentionChannels{}, fmt.Errorf("predictor: Attention selection: layer %d outside 0..%d", layer, len(s.attention)-1)
	}
	a := s.attention[layer]
	if a == nil {
		return model.AttentionChannels{}, nil
	}
	fail := func(err error) (model.AttentionChannels, error) {
		return model.AttentionChannels{}, fmt.Errorf("predictor: layer %d attention selection: %w", layer, err)
	}
	batch, err := s.checkBatch(rec, x, tokens)
	if err != nil {
		return fail(err)
	}
	d := s.dims
	chunks := (batch.tokens + selectChunkTokens - 1) / selectChunkTokens
	maskView, maskBase := tokens.Mask.View()
	// Partial sums of q, k and v, each [chunksMax, channels].
	partialBase := []int{0, s.chunksMax * d.qChannels, s.chunksMax * (d.qChannels + d.kvChannels)}
	for i, p := range []struct {
		f        *Factors
		channels int
	}{{a.q, d.qChannels}, {a.k, d.kvChannels}, {a.v, d.kvChannels}} {
		z := s.projection(i, batch.tokens, p.f.Rank)
		if err := gpu.Gemm(rec, gpu.GemmArgs{A: x, B: p.f.A, C: z, M: batch.tokens, N: p.f.Rank, K: d.hidden}); err != nil {
			return fail(err)
		}
		zView, zBase := z.View()
		bView, bBase := p.f.B.View()
		if err := s.dispatch(rec, opColumnSumSquares, p.f.Rank,
			selectParams{n: uint32(p.channels), tokens: uint32(batch.tokens),
				srcBase: zBase, factorABase: bBase, wordsInBase: maskBase, dstBase: uint32(partialBase[i])},
			selectBindings{src: zView, factorA: bView, wordsIn: maskView, dst: gpu.Bind(s.partials)},
			groups(p.channels), uint32(chunks)); err != nil {
			return fail(err)
		}
	}
	pairing := uint32(0)
	if s.opts.AuthorsGQA {
		pairing = 1
	}
	if err := s.dispatch(rec, opAttentionScores, 1,
		selectParams{n: uint32(d.kvChannels), width: uint32(d.qChannels), chunks: uint32(chunks),
			group: uint32(d.group), headDim: uint32(d.headDim), mode: pairing,
			srcBase: uint32(partialBase[0]), src2Base: uint32(partialBase[1]), src3Base: uint32(partialBase[2]),
			dstBase: 0, dst2Base: uint32(d.kvChannels)},
		selectBindings{src: gpu.Bind(s.partials), dst: a.scores.Binding()},
		groups(d.kvChannels), 1); err != nil {
		return fail(err)
	}
	queryMap, outputMap, outputChannels := mapGQA, mapGQA, d.qChannels
	if s.opts.AuthorsGQA {
		queryMap, outputMap, outputChannels = mapGroupMajor, mapIdentity, d.kvChannels
	}
	steps := []struct {
		scoreOffset int // in floats, into a.scores
		lists       []gpu.IndexList
		channels    []int
		maps        []listMap
	}{
		{0, []gpu.IndexList{a.kList, a.qList}, []int{d.kvChannels, d.qChannels}, []listMap{mapIdentity, queryMap}},
		{d.kvChannels, []gpu.IndexList{a.vList, a.oList}, []int{d.kvChannels, outputChannels}, []listMap{mapIdentity, outputMap}},
	}
	for _, step := range steps {
		if err := s.selectTop(rec, a.scores.Buf, step.scoreOffset, d.kvChannels, a.keep); err != nil {
			return fail(err)
		}
		for i, list := range step.lists {
			if err := s.compact(rec, list, step.channels[i], step.maps[i]); err != nil {
				return fail(err)
			}
		}
	}
	return model.AttentionChannels{Q: &a.qList, K: &a.kList, V: &a.vList, O: &a.oList}, nil
}

// selectBatch is a batch's shape.
type selectBatch struct{ rows, seq, tokens int }

// checkBatch checks a selection's inputs against the Selector's sizes.
func (s *Selector) checkBatch(rec *gpu.Recorder, x *gpu.Tensor, tokens *model.TokenSets) (selectBatch, error) {
	switch {
	case len(s.buffers) == 0:
		return selectBatch{}, errors.New("the selector was released")
	case rec == nil || rec.Device() != s.dev:
		return selectBatch{}, errors.New("the recorder is nil or records for another device")
	case tokens == nil || tokens.Mask == nil:
		return selectBatch{}, errors.New("no token mask")
	case x == nil || x.Buf == nil:
		return selectBatch{}, errors.New("no input tensor")
	}
	b := selectBatch{rows: tokens.Rows, seq: tokens.Seq, tokens: tokens.Rows * tokens.Seq}
	switch {
	case b.rows < 1 || b.seq < 1:
		return b, fmt.Errorf("batch of %d rows x %d positions, want both positive", b.rows, b.seq)
	case b.rows > s.maxRows || b.tokens > s.maxTokens:
		return b, fmt.Errorf("batch of %d rows x %d positions exceeds the selector's %d rows and %d tokens", b.rows, b.seq, s.maxRows, s.maxTokens)
	case x.DType != gpu.F32 || x.Offset%4 != 0:
		return b, fmt.Errorf("input is %s at byte %d, want f32 at a multiple of 4 bytes", x.DType, x.Offset)
	case x.Len() != b.tokens*s.dims.hidden || len(x.Shape) == 0 || x.Shape[len(x.Shape)-1] != s.dims.hidden:
		return b, fmt.Errorf("input has shape %v, want %d tokens x %d hidden", x.Shape, b.tokens, s.dims.hidden)
	case tokens.Mask.DType != gpu.F32 || tokens.Mask.Offset%4 != 0 || tokens.Mask.Len() != b.tokens:
		return b, fmt.Errorf("token mask has shape %v (%s), want %d u32 words in an f32 tensor", tokens.Mask.Shape, tokens.Mask.DType, b.tokens)
	}
	return b, nil
}

// projection is region i of the low-rank projection scratch as a [rows, rank]
// tensor.
func (s *Selector) projection(i, rows, rank int) *gpu.Tensor {
	return &gpu.Tensor{Buf: s.projections, Offset: uint64(4 * i * s.projRegion), Shape: []int{rows, rank}, DType: gpu.F32}
}

// selectTop records the keep flags of the k best of n scores at scoreOffset
// (floats) in scores.
func (s *Selector) selectTop(rec *gpu.Recorder, scores *gpu.Buffer, scoreOffset, n, k int) error {
	return s.dispatch(rec, opRank, 1,
		selectParams{n: uint32(n), k: uint32(k), srcBase: uint32(scoreOffset)},
		selectBindings{src: gpu.Bind(scores), wordsOut: gpu.Bind(s.flags)},
		groups(n), 1)
}

// compact records the writing of list from the keep flags: the n output
// channels whose flag (found through m) is set, ascending.
func (s *Selector) compact(rec *gpu.Recorder, list gpu.IndexList, n int, m listMap) error {
	return s.dispatch(rec, opCompact, 1,
		selectParams{n: uint32(n), group: uint32(s.dims.group), headDim: uint32(s.dims.headDim), mode: uint32(m),
			wordsOutBase: uint32(list.Offset)},
		selectBindings{wordsIn: gpu.Bind(s.flags), wordsOut: gpu.Bind(list.Buf)},
		1, 1)
}

// groups is the number of workgroups that give each of n channels an invocation.
func groups(n int) uint32 {
	return uint32((n + selectWorkgroupSize - 1) / selectWorkgroupSize)
}

// dispatch records one op of sparse_select.wgsl for factors of the given rank
// (1 for ops that read no factor).
func (s *Selector) dispatch(rec *gpu.Recorder, op selectOp, rank int, p selectParams, b selectBindings, gx, gy uint32) error {
	tile := max(1, min(selectChunkTokens, selectTileFloats/rank))
	for selectChunkTokens%tile != 0 { // TILE_TOKENS must divide CHUNK_TOKENS
		tile--
	}
	kernel, err := s.dev.Kernel(selectShader,
		gpu.U32("OP", int(op)), gpu.U32("WORKGROUP_SIZE", selectWorkgroupSize), gpu.U32("RANK", rank),
		gpu.U32("TILE_TOKENS", tile), gpu.U32("CHUNK_TOKENS", selectChunkTokens))
	if err != nil {
		return fmt.Errorf("%s kernel: %w", op, err)
	}
	read := func(bind gpu.Binding) gpu.Binding {
		if bind.Buffer == nil {
			return gpu.Bind(s.readPlaceholder)
		}
		return bind
	}
	write := func(bind gpu.Binding) gpu.Binding {
		if bind.Buffer == nil {
			return gpu.Bind(s.writePlaceholder)
		}
		return bind
	}
	bindings := []gpu.Binding{read(b.src), read(b.factorA), read(b.factorB), read(b.wordsIn), write(b.dst), write(b.wordsOut)}
	if err := rec.Dispatch(gpu.KindSelection, kernel, p.bytes(), bindings, gx, gy, 1); err != nil {
		return fmt.Errorf("%s kernel: %w", op, err)
	}
	return nil
}
