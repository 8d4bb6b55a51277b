package model

import (
	"errors"
	"fmt"

	"github.com/sparselora/sparselora/gpu"
)

// Layer holds one decoder layer's frozen weights and the adapters attached to
// its projections (nil where none).
type Layer struct {
	InputNorm, PostNorm *gpu.Tensor
	Proj                [7]*Linear // indexed by Projection
	Adapters            [7]Adapter
}

// Model is a LLaMA-family decoder (LLaMA, Mistral, Qwen2) with its frozen
// weights on the GPU (the embedding table may stay in host memory: HostEmbed).
// Compute is f32; weights are f32 or bf16.
type Model struct {
	Config *Config
	Dev    *gpu.Device
	// Embed is the embedding table [vocab, hidden] on the GPU; nil when
	// HostEmbed holds it in host memory instead (LoadOptions.HostEmbedding).
	Embed     *gpu.Tensor
	HostEmbed *Embedding // nil when Embed holds the table
	Layers    []*Layer
	Norm      *gpu.Tensor // final RMSNorm weight
	Head      *gpu.Tensor // [vocab, hidden]; the embedding table when tied
	Rope      *RopeTable
	// Sources are the checkpoint files Load read the weights from, as they
	// were when it opened them; nil for models built in memory. The SVD cache
	// keys on them instead of hashing every weight, so code that changes the
	// frozen weights after loading must set it to nil.
	Sources []SourceFile
	// Grads, when set, makes Backward accumulate the gradients of the
	// embedding, norms and LM head too (full-parameter training).
	Grads *WeightGrads
}

// Release frees the model's GPU memory.
func (m *Model) Release() {
	release := func(ts ...*gpu.Tensor) {
		for _, t := range ts {
			t.Release()
		}
	}
	release(m.Embed, m.Norm)
	if m.Head != m.Embed {
		release(m.Head)
	}
	for _, l := range m.Layers {
		release(l.InputNorm, l.PostNorm)
		for _, p := range l.Proj {
			if p != nil {
				release(p.W, p.Bias)
			}
		}
	}
	if m.Rope != nil {
		m.Rope.Release()
	}
}

// Batch is one training batch on the host: B rows of S tokens, right-padded.
type Batch struct {
	Rows, Seq int
	InputIDs  []int32
	Mask      []int32 // attention_mask, 1 for real tokens
	Labels    []int32 // -100 where ignored
}

// layerActivations are what a layer's backward needs from its forward.
type layerActivations struct {
	x          *gpu.Tensor // residual stream entering the layer [T, H]
	xn1, rstd1 *gpu.Tensor // input_layernorm output and 1/rms
	q, k, v    *gpu.Tensor // after bias and RoPE
	attn, lse  *gpu.Tensor // attention output [T, heads*hd] and log-sum-exp [T, heads]
	mid        *gpu.Tensor // residual after attention
	xn2, rstd2 *gpu.Tensor // post_attention_layernorm output
	g, u, h    *gpu.Tensor // gate, up and SiLU(gate)*up [T, I]
	// The channels kept for context tokens in the last forward (nil: dense).
	attnKeep AttentionChannels
	mlpKeep  *gpu.IndexList
	// xa[p] is the adapter of projection p's intermediate x A^T [T, rank] from
	// this workspace's forward (nil without an adapter).
	xa [7]*gpu.Tensor
}

// Workspace holds the activations and gradient scratch of one batch shape, so a
// training step allocates nothing.
type Workspace struct {
	Rows, Seq int
	layers    []layerActivations
	final     *gpu.Tensor // residual after the last layer
	normed    *gpu.Tensor // final norm output
	rstdF     *gpu.Tensor
	ids, mask *gpu.Tensor
	// targets are the LM head's: the target of the i-th scored token at i.
	targets *gpu.Tensor
	// nTargets is the count the loss of the next passes divides by: the
	// batch's own targets after Load, the whole step's after UseStaged.
	nTargets int
	// staged are the micro-batches of the current step (Stage), stored in
	// staging one after another.
	staged        []*batchInputs
	staging       *gpu.Buffer
	stagedTargets int
	// stagedTable is the host embedding table of the model the micro-batches
	// were staged for (nil: the GPU looks their rows up).
	stagedTable *Embedding
	// embedded is the host table whose rows of the loaded batch's tokens the
	// first layer's input holds (nil when the GPU looks them up in Trunk);
	// embeddedRows is the host scratch they are gathered in.
	embedded     *Embedding
	embeddedRows []float32
	Loss         *gpu.Tensor // [1] mean cross-entropy
	head         *LMHead
	// gradient scratch, reused by every layer
	dRes, dMid, dXn   *gpu.Tensor
	dq, dk, dv, dAttn *gpu.Tensor
	dh, attnTmp       *gpu.Tensor
	// dxa is the adapters' backward scratch [T * the largest rank].
	dxa *gpu.Tensor
	all []*gpu.Tensor

	// Tokens are the batch's real, context and scored rows (set by Load).
	Tokens     TokenSets
	tokenLists *gpu.Buffer
	// sparseScored records whether the last forward's selector runs scored
	// tokens sparse too, for the backward of that forward.
	sparseScored bool
	// Trace, when set, is called as the passes record: with a decoder layer's
	// index before that layer's dispatches, and with -1 before those outside
	// the layers (embedding, final norm, LM head), so that a benchmark can
	// attribute the work it counts.
	Trace func(layer int)
	// NoContextGradQKVO drops the activation gradient through the frozen
	// q/k/v/o projections on context tokens of sparse layers, as the reference
	// implementation does (a compatibility flag, off by default).
	NoContextGradQKVO bool

	// checkpoint: the layers share one set of activations besides their
	// inputs (WorkspaceOptions.GradCheckpoint); scratchLayer is the layer
	// whose activations that set holds now (-1: none).
	checkpoint   bool
	scratchLayer int
	// every is the checkpoint segment's length (WorkspaceOptions.CheckpointEvery,
	// at least 1); slotsSegment is the segment whose inner layers' inputs
	// the shared input slots hold now (-1: none).
	every        int
	slotsSegment int
	// forwardOnly: WorkspaceOptions.ForwardOnly.
	forwardOnly bool
}

// NewWorkspace allocates the buffers for batches of rows x seq tokens,
// including the per-pass state of the adapters attached now (attach adapters
// before creating the workspaces that run them).
func (m *Model) NewWorkspace(rows, seq int) (*Workspace, error) {
	return m.NewWorkspaceWith(rows, seq, WorkspaceOptions{})
}

// WorkspaceOptions change how a workspace trades memory for compute.
type WorkspaceOptions struct {
	// GradCheckpoint keeps only each decoder layer's input between forward
	// and backward; backward recomputes the layer's forward (with the
	// channels the step selected) before running its backward.
	GradCheckpoint bool
	// CheckpointEvery, with GradCheckpoint, keeps the input of every N-th
	// layer only (0 or 1: every layer's): the layers in between share N-1
	// input buffers, which backward refills by replaying the forward of the
	// segment of N layers from its kept input. Results are the same; about
	// (N-1)/N more layer forwards per step, for N-1 of every N inputs.
	CheckpointEvery int
	// ForwardOnly allocates a workspace for forward passes only (evaluation):
	// the layers share one set of activations, their inputs alternate
	// between two buffers, and there are no gradient buffers; Backward
	// refuses it.
	ForwardOnly bool
}

// checkpointEvery is the segment length opts keep layer inputs at.
func (opts WorkspaceOptions) checkpointEvery() int {
	if !opts.GradCheckpoint {
		return 1
	}
	return max(opts.CheckpointEvery, 1)
}

// CheckpointSegment is the segment length for a model of layers decoder
// layers that keeps the fewest layer inputs (ceil(layers/N) kept plus N-1
// shared), the shortest of those, which replays the least.
func CheckpointSegment(layers int) int {
	best, bestInputs := 1, layers
	for n := 2; n <= layers; n++ {
		if inputs := checkpointInputs(layers, n); inputs < bestInputs {
			best, bestInputs = n, inputs
		}
	}
	return best
}

// checkpointInputs is how many layer inputs a model of layers layers keeps
// with segments of n: one per segment and n-1 shared by the segments' inner
// layers.
func checkpointInputs(layers, n int) int {
	n = max(n, 1)
	return (layers+n-1)/n + min(n, layers) - 1
}

// NewWorkspaceWith is NewWorkspace with options.
func (m *Model) NewWorkspaceWith(rows, seq int, opts WorkspaceOptions) (*Workspace, error) {
	c := m.Config
	T := rows * seq
	qDim, kvDim := c.NumAttentionHeads*c.HeadDim, c.NumKeyValueHeads*c.HeadDim
	if c.SlidingWindow > 0 && seq > c.SlidingWindow {
		return nil, fmt.Errorf("%s: sequences of %d tokens exceed sliding_window %d, which sparselora does not implement", c.Path, seq, c.SlidingWindow)
	}
	w := &Workspace{Rows: rows, Seq: seq, checkpoint: opts.GradCheckpoint && !opts.ForwardOnly, scratchLayer: -1,
		every: opts.checkpointEvery(), slotsSegment: -1, forwardOnly: opts.ForwardOnly}
	var err error
	alloc := func(label string, shape ...int) *gpu.Tensor {
		if err != nil {
			return nil
		}
		var t *gpu.Tensor
		t, err = m.Dev.NewTensor(gpu.F32, label, shape...)
		if err == nil {
			w.all = append(w.all, t)
		}
		return t
	}
	w.layers = make([]layerActivations, len(m.Layers))
	maxRank := 0
	// With checkpointing every layer keeps only its input x; the rest is one
	// set shared by all layers, which backward refills by recomputing the
	// layer's forward. A forward-only workspace needs no more than that set.
	var shared *layerActivations
	if opts.GradCheckpoint || opts.ForwardOnly {
		shared = &layerActivations{}
		allocActivations(shared, alloc, T, c.HiddenSize, c.IntermediateSize, qDim, kvDim, c.NumAttentionHeads)
		var ranks [7]int
		for _, l := range m.Layers {
			for p, ad := range l.Adapters {
				if ad != nil {
					ranks[p] = max(ranks[p], ad.Rank())
				}
			}
		}
		for p, r := range ranks {
			if r > 0 {
				shared.xa[p] = alloc("adapter x A^T", T, r)
			}
		}
	}
	// With checkpoint segments, the inner layers of every segment share
	// these inputs (see replaySegment); a forward-only workspace's layers
	// alternate between two.
	every := w.every
	if opts.ForwardOnly {
		every = 2
	}
	slots := make([]*gpu.Tensor, min(every, len(w.layers))-1)
	for i := range slots {
		slots[i] = alloc("residual (segment slot)", T, c.HiddenSize)
	}
	for i := range w.layers {
		a := &w.layers[i]
		if shared != nil {
			*a = *shared
		} else {
			allocActivations(a, alloc, T, c.HiddenSize, c.IntermediateSize, qDim, kvDim, c.NumAttentionHeads)
		}
		switch {
		case opts.ForwardOnly && i > 1:
			a.x = w.layers[i%2].x
		case i%every == 0:
			a.x = alloc("residual", T, c.HiddenSize)
		default:
			a.x = slots[i%every-1]
		}
		for p, ad := range m.Layers[i].Adapters {
			if ad == nil || ad.Rank() == 0 {
				a.xa[p] = nil
				continue
			}
			maxRank = max(maxRank, ad.Rank())
			if shared == nil {
				a.xa[p] = alloc("adapter x A^T", T, ad.Rank())
			} else if a.xa[p] != nil {
				a.xa[p] = &gpu.Tensor{Buf: a.xa[p].Buf, Offset: a.xa[p].Offset, Shape: []int{T, ad.Rank()}, DType: gpu.F32}
			}
		}
	}
	w.final, w.normed, w.rstdF = alloc("final", T, c.HiddenSize), alloc("normed", T, c.HiddenSize), alloc("rstdF", T)
	w.ids, w.mask, w.targets = alloc("ids", T), alloc("mask", T), alloc("targets", T)
	w.Loss = alloc("loss", 1)
	if !opts.ForwardOnly {
		w.allocGradients(alloc, T, c.HiddenSize, c.IntermediateSize, qDim, kvDim, c.NumAttentionHeads, maxRank)
	}
	if err != nil {
		w.Release()
		return nil, fmt.Errorf("allocating activations for %d x %d tokens: %w", rows, seq, err)
	}
	if w.tokenLists, err = m.Dev.NewBuffer(uint64(4*3*(T+1)), "token lists"); err != nil {
		w.Release()
		return nil, err
	}
	w.Tokens = TokenSets{Rows: rows, Seq: seq, Mask: w.mask,
		Real:    gpu.IndexList{Buf: w.tokenLists},
		Context: gpu.IndexList{Buf: w.tokenLists, Offset: T + 1},
		Scored:  gpu.IndexList{Buf: w.tokenLists, Offset: 2 * (T + 1)}}
	if w.head, err = NewLMHead(m.Dev, T, c.HiddenSize, c.VocabSize); err != nil {
		w.Release()
		return nil, err
	}
	return w, nil
}

// allocGradients allocates backward's buffers, shared by the layers.
func (w *Workspace) allocGradients(alloc func(string, ...int) *gpu.Tensor, T, H, I, qDim, kvDim, heads, maxRank int) {
	if maxRank > 0 {
		w.dxa = alloc("adapter backward scratch", T*maxRank)
	}
	w.dRes, w.dMid, w.dXn = alloc("dres", T, H), alloc("dmid", T, H), alloc("dxn", T, H)
	// The gate's and up's gradients have no buffers of their own: they
	// overwrite the layer's gate and up (see layerBackward).
	w.dh = alloc("dh", T, I)
	if w.dh == nil {
		return // the allocation failed: NewWorkspaceWith reports it
	}
	// The attention's gradients live in the MLP's buffers, which are dead by
	// then (the MLP's backward comes first in a layer): dq, dk and dv in dh at
	// binding-aligned offsets (they are written in one dispatch), dAttn in the
	// layer's h (w.dAttn stays nil; see attentionOutputGrad).
	if offs, ok := attentionGradOffsets(T, qDim, kvDim, I); ok {
		view := func(t *gpu.Tensor, off, width int) *gpu.Tensor {
			return &gpu.Tensor{Buf: t.Buf, Offset: t.Offset + uint64(4*off), Shape: []int{T, width}, DType: gpu.F32}
		}
		w.dq, w.dk, w.dv = view(w.dh, offs[0], qDim), view(w.dh, offs[1], kvDim), view(w.dh, offs[2], kvDim)
	} else {
		w.dq, w.dk, w.dv, w.dAttn = alloc("dq", T, qDim), alloc("dk", T, kvDim), alloc("dv", T, kvDim), alloc("dattn", T, qDim)
	}
	w.attnTmp = alloc("attention scratch", T, heads)
}

// bindingAlignFloats is WebGPU's largest minStorageBufferOffsetAlignment (256
// bytes) in f32 elements: views that one dispatch writes side by side start on
// it, so that their bindings never overlap.
const bindingAlignFloats = 64

// attentionGradOffsets places dq [T, q], dk and dv [T, kv] in one [T, I]
// buffer at binding-aligned element offsets; ok is false when they do not
// fit (then they get buffers of their own), or when dAttn [T, q] would not
// fit in another.
func attentionGradOffsets(T, q, kv, I int) (offs [3]int, ok bool) {
	up := func(n int) int { return (n + bindingAlignFloats - 1) / bindingAlignFloats * bindingAlignFloats }
	offs[1] = up(T * q)
	offs[2] = up(offs[1] + T*kv)
	return offs, offs[2]+T*kv <= T*I && q <= I
}

// attentionOutputGrad is where layer activations a's backward puts the
// gradient of the attention's output [T, q]: a buffer of its own, or the
// first columns' worth of a.h, dead once the MLP's backward has read it.
func (w *Workspace) attentionOutputGrad(a *layerActivations) *gpu.Tensor {
	if w.dAttn != nil {
		return w.dAttn
	}
	T, q := w.dq.Shape[0], w.dq.Shape[1]
	return &gpu.Tensor{Buf: a.h.Buf, Offset: a.h.Offset, Shape: []int{T, q}, DType: gpu.F32}
}

// allocActivations allocates a layer's activations other than its input x
// and the adapters' state.
func allocActivations(a *layerActivations, alloc func(string, ...int) *gpu.Tensor, T, H, I, qDim, kvDim, heads int) {
	a.xn1, a.rstd1 = alloc("xn1", T, H), alloc("rstd1", T)
	a.q, a.k, a.v = alloc("q", T, qDim), alloc("k", T, kvDim), alloc("v", T, kvDim)
	a.attn, a.lse = alloc("attention", T, qDim), alloc("lse", T, heads)
	a.mid = alloc("mid", T, H)
	a.xn2, a.rstd2 = alloc("xn2", T, H), alloc("rstd2", T)
	a.g, a.u, a.h = alloc("gate", T, I), alloc("up", T, I), alloc("h", T, I)
}

// GradCheckpoint reports whether backward recomputes each layer's forward.
func (w *Workspace) GradCheckpoint() bool { return w.checkpoint }

// Release frees the workspace.
func (w *Workspace) Release() {
	for _, t := range w.all {
		t.Release()
	}
	w.all = nil
	w.tokenLists.Release()
	w.staging.Release()
	if w.head != nil {
		w.head.Release()
	}
}

// batchInputs is a batch prepared for the GPU: the u32 words of the ids, mask,
// loss targets and token lists, and the host-side counts that size dispatches.
type batchInputs struct {
	ids, mask, targets, lists []uint32
	realCount, contextCount   int
	scoredCount, targetCount  int
}

// prepare checks a batch against the workspace and the model and builds its
// inputs.
func (w *Workspace) prepare(m *Model, b Batch) (*batchInputs, error) {
	T := w.Rows * w.Seq
	if b.Rows != w.Rows || b.Seq != w.Seq || len(b.InputIDs) != T || len(b.Mask) != T || len(b.Labels) != T {
		return nil, fmt.Errorf("batch of %dx%d (%d ids, %d mask, %d labels) does not fit a %dx%d workspace",
			b.Rows, b.Seq, len(b.InputIDs), len(b.Mask), len(b.Labels), w.Rows, w.Seq)
	}
	in := &batchInputs{ids: make([]uint32, T), mask: make([]uint32, T)}
	for i := range in.ids {
		if b.InputIDs[i] < 0 || int(b.InputIDs[i]) >= m.Config.VocabSize {
			return nil, fmt.Errorf("batch row %d position %d: token id %d outside the vocabulary (%d)", i/w.Seq, i%w.Seq, b.InputIDs[i], m.Config.VocabSize)
		}
		in.ids[i] = uint32(b.InputIDs[i])
		if b.Mask[i] != 0 {
			in.mask[i] = 1
		}
	}
	var err error
	if in.targets, in.targetCount, err = Targets(b.Labels, b.Rows, b.Seq, m.Config.VocabSize); err != nil {
		return nil, err
	}
	in.lists = make([]uint32, 3*(T+1))
	real, context, scored := in.lists[:T+1], in.lists[T+1:2*(T+1)], in.lists[2*(T+1):]
	for i := range T {
		if in.mask[i] == 0 {
			continue
		}
		real[0]++
		real[real[0]] = uint32(i)
		if in.targets[i] != NoTarget {
			scored[0]++
			scored[scored[0]] = uint32(i)
		} else {
			context[0]++
			context[context[0]] = uint32(i)
		}
	}
	in.realCount, in.contextCount, in.scoredCount = int(real[0]), int(context[0]), int(scored[0])
	// The LM head runs on the scored tokens only, in list order.
	headTargets := make([]uint32, T)
	for i := range headTargets {
		headTargets[i] = NoTarget
	}
	for i, row := range scored[1 : 1+in.scoredCount] {
		headTargets[i] = in.targets[row]
	}
	in.targets = headTargets
	return in, nil
}

// destinations pairs each part of a batch's inputs with the workspace buffer
// region it belongs in.
func (w *Workspace) destinations(in *batchInputs) []struct {
	buf    *gpu.Buffer
	offset uint64
	words  []uint32
} {
	return []struct {
		buf    *gpu.Buffer
		offset uint64
		words  []uint32
	}{{w.ids.Buf, w.ids.Offset, in.ids}, {w.mask.Buf, w.mask.Offset, in.mask},
		{w.targets.Buf, w.targets.Offset, in.targets}, {w.tokenLists, 0, in.lists}}
}

// use makes the host-side counts of in those of the passes recorded next.
func (w *Workspace) use(in *batchInputs, lossTargets int) {
	w.Tokens.RealCount, w.Tokens.ContextCount, w.Tokens.ScoredCount = in.realCount, in.contextCount, in.scoredCount
	w.nTargets = lossTargets
}

// Load uploads a batch's token ids, mask and loss targets now (a queue write),
// for a forward and backward over this batch alone: its loss is the mean over
// its own targets. Passes already recorded but not yet submitted would see
// these inputs too; to record several micro-batches into one submission, use
// Stage and UseStaged.
func (w *Workspace) Load(m *Model, b Batch) error {
	in, err := w.prepare(m, b)
	if err != nil {
		return err
	}
	for _, d := range w.destinations(in) {
		if err := d.buf.Write(d.offset, gpu.U32Bytes(d.words)); err != nil {
			return err
		}
	}
	if err := w.writeEmbedded(m.HostEmbed, in); err != nil {
		return err
	}
	w.use(in, in.targetCount)
	return nil
}

// writeEmbedded writes the rows of in's tokens, looked up in the host table
// (nil: none, the GPU looks them up in Trunk), into the first layer's input
// now (a queue write), where Trunk's embedding lookup would put them.
func (w *Workspace) writeEmbedded(table *Embedding, in *batchInputs) error {
	w.embedded = table
	if table == nil {
		return nil
	}
	x := w.layers[0].x
	if n := x.Len(); len(w.embeddedRows) != n {
		w.embeddedRows = make([]float32, n)
	}
	if err := table.Lookup(in.ids, w.embeddedRows); err != nil {
		return err
	}
	if err := x.Upload(w.embeddedRows); err != nil {
		return fmt.Errorf("uploading the embedded tokens: %w", err)
	}
	return nil
}

// Stage uploads the micro-batches of one optimizer step, each into its own
// region of a staging buffer, so that all of them can be recorded into one
// submission (UseStaged copies one into the workspace inside the recorded
// commands). It returns the step's total loss-target count, which every
// staged micro-batch's loss and gradients are divided by (HF's
// num_items_in_batch), so that the accumulated gradients are those of the
// step's mean loss.
func (w *Workspace) Stage(m *Model, batches []Batch) (int, error) {
	w.staged = w.staged[:0]
	total := 0
	for i, b := range batches {
		in, err := w.prepare(m, b)
		if err != nil {
			return 0, fmt.Errorf("micro-batch %d: %w", i, err)
		}
		w.staged = append(w.staged, in)
		total += in.targetCount
	}
	T := w.Rows * w.Seq
	region := uint64(4 * (3*T + 3*(T+1)))
	if need := region * uint64(len(batches)); w.staging == nil || w.staging.Size() < need {
		w.staging.Release()
		var err error
		if w.staging, err = m.Dev.NewBuffer(need, "micro-batch staging"); err != nil {
			w.staging = nil
			return 0, fmt.Errorf("staging %d micro-batches: %w", len(batches), err)
		}
	}
	for i, in := range w.staged {
		offset := region * uint64(i)
		for _, d := range w.destinations(in) {
			if err := w.staging.Write(offset, gpu.U32Bytes(d.words)); err != nil {
				return 0, err
			}
			offset += uint64(4 * len(d.words))
		}
	}
	w.stagedTargets = total
	w.stagedTable = m.HostEmbed
	return total, nil
}

// SetStagedTargets replaces the loss-target count that the staged
// micro-batches divide by (Stage's total): in data-parallel training, the
// count summed over every process's micro-batches of the step.
func (w *Workspace) SetStagedTargets(n int) { w.stagedTargets = n }

// UseStaged records copying staged micro-batch i into the workspace's inputs;
// the passes recorded after it (until the next Load or UseStaged) run on it.
//
// When the model keeps its embedding table in host memory, the rows of the
// micro-batch's tokens are looked up on the host and written into the first
// layer's input by a queue write, which runs before any submission that
// follows it: UseStaged then first submits what rec holds (the previous
// micro-batch's passes, which read the previous rows), so that a step's
// micro-batches take one submission each rather than one in all, and only
// one micro-batch's rows are ever on the GPU.
func (w *Workspace) UseStaged(rec *gpu.Recorder, i int) error {
	if i < 0 || i >= len(w.staged) {
		return fmt.Errorf("micro-batch %d not staged (%d are)", i, len(w.staged))
	}
	in := w.staged[i]
	if w.stagedTable != nil {
		if err := rec.Submit(); err != nil {
			return fmt.Errorf("submitting the passes before micro-batch %d: %w", i, err)
		}
	}
	if err := w.writeEmbedded(w.stagedTable, in); err != nil {
		return fmt.Errorf("micro-batch %d: %w", i, err)
	}
	T := w.Rows * w.Seq
	offset := uint64(4*(3*T+3*(T+1))) * uint64(i)
	for _, d := range w.destinations(in) {
		size := uint64(4 * len(d.words))
		rec.Copy(d.buf, d.offset, w.staging, offset, size)
		offset += size
	}
	w.use(in, w.stagedTargets)
	return nil
}

func (m *Model) attentionShape(w *Workspace) AttentionShape {
	c := m.Config
	return AttentionShape{Batch: w.Rows, Seq: w.Seq, Heads: c.NumAttentionHeads, KVHeads: c.NumKeyValueHeads, HeadDim: c.HeadDim}
}

// adapterState checks that the workspace holds the per-pass state of the
// adapter on projection p and returns its xa.
func (l *Layer) adapterState(p Projection, a *layerActivations) (*gpu.Tensor, error) {
	ad := l.Adapters[p]
	if ad == nil || ad.Rank() == 0 {
		return nil, nil
	}
	if xa := a.xa[p]; xa != nil && xa.Shape[1] == ad.Rank() {
		return xa, nil
	}
	return nil, fmt.Errorf("%s adapter: the workspace has no state for it (create workspaces after attaching adapters)", p)
}

// dxaScratch is the adapters' backward scratch shaped [T, rank].
func (w *Workspace) dxaScratch(rank int) *gpu.Tensor {
	return &gpu.Tensor{Buf: w.dxa.Buf, Offset: w.dxa.Offset, Shape: []int{w.Rows * w.Seq, rank}, DType: gpu.F32}
}

// rowsOfSet are the token rows of a GPU list with a host-known count.
func rowsOfSet(list *gpu.IndexList, count int) RowSet { return RowSet{List: list, Count: count} }

// realRows are the batch's real tokens: all rows when there is no padding (plain
// GEMMs), else the Real list, so that padding costs no GEMM work.
func (w *Workspace) realRows() RowSet {
	if T := w.Rows * w.Seq; w.Tokens.RealCount == T {
		return RowSet{Count: T}
	}
	return rowsOfSet(&w.Tokens.Real, w.Tokens.RealCount)
}

// scoredRows are the tokens the LM head runs on.
func (w *Workspace) scoredRows() RowSet { return rowsOfSet(&w.Tokens.Scored, w.Tokens.ScoredCount) }

// projectionPart is one set of token rows a frozen projection runs on and the
// channels it keeps there (nil: all).
type projectionPart struct {
	rows RowSet
	keep *gpu.IndexList
}

// parts splits the real tokens for a frozen projection whose context tokens
// keep the channels keep (nil: a dense layer). Scored tokens run dense unless
// the selector runs them sparse too (skip_output_tokens: false); padding is in
// no part (SPEC 4.5).
func (w *Workspace) parts(keep *gpu.IndexList) []projectionPart {
	if keep == nil || w.sparseScored {
		return []projectionPart{{w.realRows(), keep}}
	}
	return []projectionPart{
		{w.scoredRows(), nil},
		{rowsOfSet(&w.Tokens.Context, w.Tokens.ContextCount), keep},
	}
}

// writesEverything reports whether parts write every element of their output
// (one dense part over all rows), so that overwriting needs no clearing first:
// otherwise the rows and channels they skip must read 0.
func writesEverything(parts []projectionPart) bool {
	return len(parts) == 1 && !parts[0].rows.Gathered() && parts[0].keep == nil
}

// adapterForward adds the adapter's output on projection p, if any.
func (l *Layer) adapterForward(rec *gpu.Recorder, p Projection, x, y *gpu.Tensor, a *layerActivations, rows RowSet) error {
	xa, err := l.adapterState(p, a)
	if err != nil {
		return err
	}
	if ad := l.Adapters[p]; ad != nil {
		if xa != nil && !rows.Gathered() {
			xa = rowsOf(xa, 0, rows.Count, ad.Rank())
		}
		if err := ad.Forward(rec, x, y, xa, rows); err != nil {
			return fmt.Errorf("%s adapter: %w", p, err)
		}
	}
	return nil
}

// trace reports the part of the model whose dispatches follow (see Trace).
func (w *Workspace) trace(layer int) {
	if w.Trace != nil {
		w.Trace(layer)
	}
}

func clearTensor(rec *gpu.Recorder, t *gpu.Tensor) { rec.Clear(t.Buf, t.Offset, t.Bytes()) }

// projectKeepOutputs runs a projection that produces output channels (q, k, v,
// gate, up) over the parts of the batch (see parts): the kept channels for
// context tokens of sparse layers, all channels otherwise, nothing for
// padding; what a part skips is 0 before the bias and the adapter are added.
func (l *Layer) projectKeepOutputs(rec *gpu.Recorder, p Projection, x, y *gpu.Tensor, w *Workspace, a *layerActivations, keep *gpu.IndexList) error {
	parts := w.parts(keep)
	if !writesEverything(parts) {
		clearTensor(rec, y)
	}
	for _, part := range parts {
		if part.rows.Count == 0 {
			continue
		}
		if err := l.Proj[p].ForwardKeepOutputs(rec, x, y, part.rows, part.keep, false); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return l.addBiasAndAdapter(rec, p, x, y, a, w)
}

// projectKeepInputs adds a projection that reads input channels (o, down) into
// y over the parts of the batch: reading only the kept channels for context
// tokens of sparse layers.
func (l *Layer) projectKeepInputs(rec *gpu.Recorder, p Projection, x, y *gpu.Tensor, w *Workspace, a *layerActivations, keep *gpu.IndexList) error {
	for _, part := range w.parts(keep) {
		if part.rows.Count == 0 {
			continue
		}
		if err := l.Proj[p].ForwardKeepInputs(rec, x, y, part.rows, part.keep, true); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return l.addBiasAndAdapter(rec, p, x, y, a, w)
}

// addBiasAndAdapter adds the frozen bias (on every channel: like the adapter,
// it is not part of the sparse matmul) and the adapter's output on the real
// tokens.
func (l *Layer) addBiasAndAdapter(rec *gpu.Recorder, p Projection, x, y *gpu.Tensor, a *layerActivations, w *Workspace) error {
	if b := l.Proj[p].Bias; b != nil {
		if err := AddBias(rec, y, b, w.Rows*w.Seq, l.Proj[p].Out); err != nil {
			return fmt.Errorf("%s bias: %w", p, err)
		}
	}
	return l.adapterForward(rec, p, x, y, a, w.realRows())
}

// backwardKeptOutputs adds to dx (overwriting it first unless accumulate) the
// input gradient of an output-channel projection over the parts of the batch,
// through the kept channels only for context tokens of sparse layers ("sparse
// but present"; skipSparse drops that part), and the adapter's part.
func (l *Layer) backwardKeptOutputs(rec *gpu.Recorder, p Projection, x, dy, dx *gpu.Tensor, w *Workspace, a *layerActivations, keep *gpu.IndexList, accumulate, skipSparse bool) error {
	parts := w.parts(keep)
	if !accumulate && !writesEverything(parts) {
		clearTensor(rec, dx)
	}
	for _, part := range parts {
		if part.rows.Count == 0 || skipSparse && part.keep != nil {
			continue
		}
		// Parts hold disjoint rows, and each writes whole rows of dx.
		if err := l.Proj[p].BackwardKeptOutputs(rec, dy, dx, part.rows, part.keep, accumulate); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return l.adapterBackward(rec, p, x, dy, dx, w, a)
}

// backwardKeptInputs overwrites dx with the input gradient of an input-channel
// projection over the parts of the batch: only the kept channels for context
// tokens of sparse layers (skipSparse drops that part), and the adapter's part.
func (l *Layer) backwardKeptInputs(rec *gpu.Recorder, p Projection, x, dy, dx *gpu.Tensor, w *Workspace, a *layerActivations, keep *gpu.IndexList, skipSparse bool) error {
	parts := w.parts(keep)
	if !writesEverything(parts) {
		clearTensor(rec, dx)
	}
	for _, part := range parts {
		if part.rows.Count == 0 || skipSparse && part.keep != nil {
			continue
		}
		if err := l.Proj[p].BackwardKeptInputs(rec, dy, dx, part.rows, part.keep); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return l.adapterBackward(rec, p, x, dy, dx, w, a)
}

func (l *Layer) adapterBackward(rec *gpu.Recorder, p Projection, x, dy, dx *gpu.Tensor, w *Workspace, a *layerActivations) error {
	xa, err := l.adapterState(p, a)
	if err != nil {
		return err
	}
	if ad := l.Adapters[p]; ad != nil {
		var dxa *gpu.Tensor
		if xa != nil {
			dxa = w.dxaScratch(ad.Rank())
		}
		if err := ad.Backward(rec, x, xa, dy, dx, dxa, w.realRows()); err != nil {
			return fmt.Errorf("%s adapter: %w", p, err)
		}
	}
	return nil
}

// Forward records the whole forward pass and the loss for the loaded batch.
// sel chooses the channels that the frozen projections of the layers it
// covers keep on context tokens (SparseLoRA); nil runs every layer dense.
// Backward follows the same selection.
func (m *Model) Forward(rec *gpu.Recorder, w *Workspace, sel ChannelSelector) error {
	if err := m.Trunk(rec, w, sel); err != nil {
		return err
	}
	return w.head.Forward(rec, w.normed, w.scoredRows(), m.Head, w.targets, w.nTargets, w.Loss)
}

// Logits records the logits of every position ([rows*seq, vocab]) from the
// last Trunk or Forward.
func (m *Model) Logits(rec *gpu.Recorder, w *Workspace, out *gpu.Tensor) error {
	return w.head.Logits(rec, w.normed, m.Head, out)
}

// Hidden returns HF's hidden_states[i]: the embeddings (i = 0), the residual
// stream after layer i-1, and for i = layers the final norm's output. Layers
// that share input buffers (checkpoint segments, a forward-only workspace)
// hold only the last forward's values there.
func (w *Workspace) Hidden(i int) *gpu.Tensor {
	if i == len(w.layers) {
		return w.normed
	}
	return w.layers[i].x
}

// Trunk records the forward pass up to the final norm (no loss), sparse where
// sel selects channels (nil: dense).
func (m *Model) Trunk(rec *gpu.Recorder, w *Workspace, sel ChannelSelector) error {
	c := m.Config
	T := w.Rows * w.Seq
	H, I := c.HiddenSize, c.IntermediateSize
	eps := float32(c.RMSNormEps)
	w.sparseScored = sel != nil && sel.SparseScoredTokens()
	w.trace(-1)
	switch {
	case w.embedded != m.HostEmbed:
		return fmt.Errorf("embedding: the workspace holds no rows of this model's host embedding table (load the batch for this model with Load, or Stage and UseStaged; a forward-only workspace's forward overwrites them)")
	case m.HostEmbed == nil:
		if err := EmbeddingForward(rec, m.Embed, w.ids, w.layers[0].x, T, H); err != nil {
			return fmt.Errorf("embedding: %w", err)
		}
	case w.forwardOnly && len(m.Layers) > 2:
		// Load or UseStaged wrote the rows of the batch's tokens, which
		// layer 2's input overwrites (the inputs alternate).
		w.embedded = nil
	}
	for i, l := range m.Layers {
		a := &w.layers[i]
		next := w.final
		if i+1 < len(m.Layers) {
			next = w.layers[i+1].x
		}
		w.trace(i)
		if err := m.layerForward(rec, w, sel, i, l, a, next, T, H, I, eps, false); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	w.scratchLayer = len(m.Layers) - 1
	// The slots hold the inputs of the last segment with inner layers.
	w.slotsSegment = -1
	if last := len(m.Layers) - 1; last%w.every != 0 {
		w.slotsSegment = last / w.every
	} else if last > 0 {
		w.slotsSegment = (last - 1) / w.every
	}
	w.trace(-1)
	if err := RMSNormForward(rec, w.final, m.Norm, w.normed, w.rstdF, T, H, eps); err != nil {
		return fmt.Errorf("final norm: %w", err)
	}
	return nil
}

// layerForward records a decoder layer's forward from a.x into next, selecting
// channels with sel (nil: dense). recompute (checkpointing's backward) selects
// nothing and reuses the channels the step's forward kept.
func (m *Model) layerForward(rec *gpu.Recorder, w *Workspace, sel ChannelSelector, layer int, l *Layer, a *layerActivations, next *gpu.Tensor, T, H, I int, eps float32, recompute bool) error {
	c := m.Config
	if err := RMSNormForward(rec, a.x, l.InputNorm, a.xn1, a.rstd1, T, H, eps); err != nil {
		return err
	}
	if !recompute {
		a.attnKeep, a.mlpKeep = AttentionChannels{}, nil
	}
	if sel != nil && !recompute {
		keep, err := sel.Attention(rec, layer, a.xn1, &w.Tokens)
		if err != nil {
			return fmt.Errorf("attention channel selection: %w", err)
		}
		a.attnKeep = keep
	}
	for _, p := range []struct {
		proj Projection
		out  *gpu.Tensor
		keep *gpu.IndexList
	}{{ProjQ, a.q, a.attnKeep.Q}, {ProjK, a.k, a.attnKeep.K}, {ProjV, a.v, a.attnKeep.V}} {
		if err := l.projectKeepOutputs(rec, p.proj, a.xn1, p.out, w, a, p.keep); err != nil {
			return err
		}
	}
	if err := RopeForward(rec, m.Rope, a.q, T, w.Seq, c.NumAttentionHeads, c.HeadDim); err != nil {
		return err
	}
	if err := RopeForward(rec, m.Rope, a.k, T, w.Seq, c.NumKeyValueHeads, c.HeadDim); err != nil {
		return err
	}
	if err := AttentionForward(rec, m.attentionShape(w), a.q, a.k, a.v, w.mask, a.attn, a.lse); err != nil {
		return err
	}
	rec.Copy(a.mid.Buf, a.mid.Offset, a.x.Buf, a.x.Offset, a.x.Bytes())
	if err := l.projectKeepInputs(rec, ProjO, a.attn, a.mid, w, a, a.attnKeep.O); err != nil {
		return err
	}
	if err := RMSNormForward(rec, a.mid, l.PostNorm, a.xn2, a.rstd2, T, H, eps); err != nil {
		return err
	}
	if sel != nil && !recompute {
		keep, err := sel.MLP(rec, layer, a.xn2, &w.Tokens)
		if err != nil {
			return fmt.Errorf("MLP channel selection: %w", err)
		}
		a.mlpKeep = keep
	}
	if err := l.projectKeepOutputs(rec, ProjGate, a.xn2, a.g, w, a, a.mlpKeep); err != nil {
		return err
	}
	if err := l.projectKeepOutputs(rec, ProjUp, a.xn2, a.u, w, a, a.mlpKeep); err != nil {
		return err
	}
	if err := SwiGLUForward(rec, a.g, a.u, a.h, T*I); err != nil {
		return err
	}
	rec.Copy(next.Buf, next.Offset, a.mid.Buf, a.mid.Offset, a.mid.Bytes())
	return l.projectKeepInputs(rec, ProjDown, a.h, next, w, a, a.mlpKeep)
}

// Backward records the backward pass of the last Forward: every adapter's
// parameter gradients accumulate; frozen weights get none.
func (m *Model) Backward(rec *gpu.Recorder, w *Workspace) error {
	if w.forwardOnly {
		return errors.New("backward on a forward-only workspace (WorkspaceOptions.ForwardOnly)")
	}
	c := m.Config
	T := w.Rows * w.Seq
	H, I := c.HiddenSize, c.IntermediateSize
	// dRes holds the gradient of the residual stream between layers. Only the
	// scored rows have a loss term: the head writes their gradient, and the
	// others are 0.
	w.trace(-1)
	clearTensor(rec, w.dXn)
	// With full-parameter training the head's weight gradient too.
	var headGrad *gpu.Tensor
	if m.Grads != nil {
		headGrad = m.Grads.Head
	}
	if err := w.head.Backward(rec, w.normed, w.scoredRows(), m.Head, w.targets, w.nTargets, w.dXn, headGrad); err != nil {
		return err
	}
	if err := RMSNormBackward(rec, w.final, m.Norm, w.rstdF, w.dXn, w.dRes, T, H, false); err != nil {
		return fmt.Errorf("final norm backward: %w", err)
	}
	if g := m.Grads; g != nil {
		if err := normWeightGrad(rec, g.Norm, w.dXn, w.final, w.rstdF, T, H); err != nil {
			return fmt.Errorf("final norm: %w", err)
		}
	}
	for i := len(m.Layers) - 1; i >= 0; i-- {
		w.trace(i)
		if err := m.replaySegment(rec, w, i, T, H, I); err != nil {
			return fmt.Errorf("layer %d backward: replaying its checkpoint segment: %w", i, err)
		}
		if err := m.layerBackward(rec, w, i, T, H, I); err != nil {
			return fmt.Errorf("layer %d backward: %w", i, err)
		}
	}
	// dRes now holds the gradient of the embeddings' output.
	if g := m.Grads; g != nil && g.Embed != nil {
		if err := EmbeddingBackward(rec, g.Embed, w.dRes, w.ids, w.mask, T, H); err != nil {
			return fmt.Errorf("embedding gradient: %w", err)
		}
	}
	return nil
}

// replaySegment refills the shared inputs of the inner layers of layer's
// checkpoint segment (see WorkspaceOptions.CheckpointEvery) when they hold
// another segment's: it replays the forward of the segment's layers below
// layer from the segment's kept input, with the channels the step kept.
func (m *Model) replaySegment(rec *gpu.Recorder, w *Workspace, layer, T, H, I int) error {
	segment := layer / w.every
	if !w.checkpoint || layer%w.every == 0 || w.slotsSegment == segment {
		return nil
	}
	eps := float32(m.Config.RMSNormEps)
	for j := segment * w.every; j < layer; j++ {
		if err := m.layerForward(rec, w, nil, j, m.Layers[j], &w.layers[j], w.layers[j+1].x, T, H, I, eps, true); err != nil {
			return fmt.Errorf("layer %d: %w", j, err)
		}
		w.scratchLayer = j
	}
	w.slotsSegment = segment
	return nil
}

func (m *Model) layerBackward(rec *gpu.Recorder, w *Workspace, layer, T, H, I int) error {
	l, a := m.Layers[layer], &w.layers[layer]
	c := m.Config
	if w.checkpoint && w.scratchLayer != layer {
		// The layer's output goes to dMid, which backward overwrites before
		// it reads it: the next layer's input stays as the forward wrote it.
		if err := m.layerForward(rec, w, nil, layer, l, a, w.dMid, T, H, I, float32(c.RMSNormEps), true); err != nil {
			return fmt.Errorf("recomputing the forward: %w", err)
		}
		w.scratchLayer = layer
	}
	skip := w.NoContextGradQKVO
	// MLP: next = mid + down(h), h = SiLU(gate) * up.
	if err := l.backwardKeptInputs(rec, ProjDown, a.h, w.dRes, w.dh, w, a, a.mlpKeep, false); err != nil {
		return err
	}
	// The gate's and up's gradients overwrite gate and up, and h is dead once
	// down's backward has read it: the layer's activations are then spent;
	// with checkpointing the next backward of this scratch recomputes them.
	if w.checkpoint {
		w.scratchLayer = -1
	}
	if err := SwiGLUBackward(rec, a.g, a.u, w.dh, T*I); err != nil {
		return err
	}
	dg, du := a.g, a.u
	if err := l.backwardKeptOutputs(rec, ProjGate, a.xn2, dg, w.dXn, w, a, a.mlpKeep, false, false); err != nil {
		return err
	}
	if err := l.backwardKeptOutputs(rec, ProjUp, a.xn2, du, w.dXn, w, a, a.mlpKeep, true, false); err != nil {
		return err
	}
	rec.Copy(w.dMid.Buf, w.dMid.Offset, w.dRes.Buf, w.dRes.Offset, w.dRes.Bytes())
	inputNormGrad, postNormGrad := m.Grads.layerNormGrads(layer)
	if err := normWeightGrad(rec, postNormGrad, w.dXn, a.mid, a.rstd2, T, H); err != nil {
		return err
	}
	if err := RMSNormBackward(rec, a.mid, l.PostNorm, a.rstd2, w.dXn, w.dMid, T, H, true); err != nil {
		return err
	}
	// Attention: mid = x + o_proj(attention(rope(q), rope(k), v)).
	dAttn := w.attentionOutputGrad(a)
	if err := l.backwardKeptInputs(rec, ProjO, a.attn, w.dMid, dAttn, w, a, a.attnKeep.O, skip); err != nil {
		return err
	}
	if err := AttentionBackward(rec, m.attentionShape(w), a.q, a.k, a.v, w.mask, a.attn, a.lse, dAttn,
		w.dq, w.dk, w.dv, w.attnTmp); err != nil {
		return err
	}
	if err := RopeBackward(rec, m.Rope, w.dq, T, w.Seq, c.NumAttentionHeads, c.HeadDim); err != nil {
		return err
	}
	if err := RopeBackward(rec, m.Rope, w.dk, T, w.Seq, c.NumKeyValueHeads, c.HeadDim); err != nil {
		return err
	}
	for i, p := range []struct {
		proj Projection
		dy   *gpu.Tensor
		keep *gpu.IndexList
	}{{ProjQ, w.dq, a.attnKeep.Q}, {ProjK, w.dk, a.attnKeep.K}, {ProjV, w.dv, a.attnKeep.V}} {
		if err := l.backwardKeptOutputs(rec, p.proj, a.xn1, p.dy, w.dXn, w, a, p.keep, i > 0, skip); err != nil {
			return err
		}
	}
	rec.Copy(w.dRes.Buf, w.dRes.Offset, w.dMid.Buf, w.dMid.Offset, w.dMid.Bytes())
	if err := normWeightGrad(rec, inputNormGrad, w.dXn, a.x, a.rstd1, T, H); err != nil {
		return err
	}
	return RMSNormBackward(rec, a.x, l.InputNorm, a.rstd1, w.dXn, w.dRes, T, H, true)
}

// rowsOf is a view of rows [r0, r0+n) of a row-major [*, width] f32 tensor.
func rowsOf(t *gpu.Tensor, r0, n, width int) *gpu.Tensor {
	return &gpu.Tensor{Buf: t.Buf, Offset: t.Offset + uint64(4*r0*width), Shape: []int{n, width}, DType: gpu.F32}
}
