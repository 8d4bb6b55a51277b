package model

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/sparselora/sparselora/gpu"
)

// Causal grouped-query attention with a padding mask (HF LLaMA eager attention,
// SPEC section 3) in the online-softmax form: forward keeps only the per-row
// logsumexp, and backward recomputes the probabilities from it, so memory grows
// with the sequence length, not its square. The kernels are in
// shaders/attention.wgsl, whose header documents the layouts and the math.
//
// Layouts (f32, row-major, T = Batch*Seq token rows, sequence b owns rows
// b*Seq .. b*Seq+Seq-1; only element counts are checked, so flat views do):
//
//	q, out, dOut, dq  [T, Heads*HeadDim]   query head h in columns h*HeadDim ..
//	k, v, dk, dv      [T, KVHeads*HeadDim] query head h reads kv head h/(Heads/KVHeads)
//	mask              [T] f32, 1 for real tokens and 0 for padding (HF's
//	                  attention_mask)
//	lse               [T, Heads]           logsumexp of each row's scaled scores
//	scratch           [T, Heads]           backward's D = rowsum(dOut*out) per row
//	                                       and head (shaders/attention_dsum.wgsl)
//
// The mask is f32 so that a gpu.Tensor's DType says what its words hold, and
// WriteAttentionMask uploads an int attention_mask that way. The kernels test
// each word for nonzero bits, so a mask of u32 0/1 words in the same tensor (as
// loss targets are stored) reads the same.
//
// Rows whose own mask is 0 get out = 0 and lse = 0: unspecified by HF, but
// finite, so they poison nothing downstream. In backward they contribute nothing
// (their loss terms are masked, so HF's gradient through them is zero as well)
// and get dq = 0; padding key rows get dk = dv = 0.
//
// Inputs are bound read-only, and WebGPU forbids binding a buffer both writable
// and read-only in one dispatch, so outputs must not share a buffer with any
// input of the same dispatch; two outputs may share one when their aligned
// bindings do not overlap. Inputs may share buffers freely (q, k, v from one
// fused projection, say), except that the kernel computing D binds dOut, out,
// mask and scratch all writable, so those must not overlap in one buffer
// (counting each binding from its aligned offset).

const (
	attentionShader     = "attention.wgsl"
	attentionDsumShader = "attention_dsum.wgsl"
)

// AttentionShape is the geometry of one attention call.
type AttentionShape struct {
	Batch, Seq     int // sequences, and positions per sequence
	Heads, KVHeads int // query heads, key/value heads (KVHeads divides Heads)
	HeadDim        int
}

// Tokens is the number of token rows, Batch*Seq.
func (s AttentionShape) Tokens() int { return s.Batch * s.Seq }

// Validate checks that the shape is positive, that KVHeads divides Heads and
// that every array's elements are reachable with the kernels' u32 indices.
func (s AttentionShape) Validate() error {
	if s.Batch <= 0 || s.Seq <= 0 || s.Heads <= 0 || s.KVHeads <= 0 || s.HeadDim <= 0 {
		return fmt.Errorf("attention shape %+v: every size must be positive", s)
	}
	if s.Heads%s.KVHeads != 0 {
		return fmt.Errorf("attention shape %+v: %d kv heads do not divide %d query heads", s, s.KVHeads, s.Heads)
	}
	if uint64(s.Batch)*uint64(s.Seq)*uint64(s.Heads)*uint64(max(s.HeadDim, 2)) > math.MaxUint32 {
		return fmt.Errorf("attention shape %+v: arrays exceed u32 indexing", s)
	}
	return nil
}

// attentionPass values are the PASS_* consts of attention.wgsl.
type attentionPass int

const (
	attentionForwardPass attentionPass = iota
	attentionQueryGradPass
	attentionKeyValueGradPass
)

func (p attentionPass) String() string {
	return [...]string{"attention forward", "attention backward (dq)", "attention backward (dk, dv)"}[p]
}

// kind is the pass's dispatch kind.
func (p attentionPass) kind() gpu.Kind {
	return [...]gpu.Kind{gpu.KindAttentionForward, gpu.KindAttentionQueryGrad, gpu.KindAttentionKeyValueGrad}[p]
}

// attentionTiles is a kernel's blocking: a workgroup of Tile invocations owns
// Own rows (queries, or keys for the dk/dv pass) and streams the other side
// past them Tile rows at a time, one row per invocation.
type attentionTiles struct{ Own, Tile int }

func (t attentionTiles) String() string {
	return fmt.Sprintf("%d owned rows x %d-row tiles", t.Own, t.Tile)
}

// workgroupBytes mirrors the workgroup arrays of attention.wgsl, each rounded
// up to 16 bytes as compilers may lay them out.
func (t attentionTiles) workgroupBytes(pass attentionPass, headDim int) uint64 {
	ownB, scoreB, dqRows, forwardRows, partial := t.Own*headDim, 1, 1, 1, 1
	switch pass {
	case attentionForwardPass:
		ownB, forwardRows, partial = 1, t.Own, t.Tile
	case attentionQueryGradPass:
		dqRows = t.Own
	case attentionKeyValueGradPass:
		scoreB = t.Own * t.Tile
	}
	var total uint64
	for _, floats := range []int{
		t.Own * headDim, ownB, // own_a, own_b
		t.Own, dqRows, dqRows, // own_real, own_lse, own_d
		forwardRows, partial, // row_scale, partial
		t.Own * t.Tile, scoreB, // score_a, score_b
	} {
		total += (4*uint64(floats) + 15) &^ 15
	}
	return total
}

func (t attentionTiles) check(pass attentionPass, headDim int, lim gpu.Limits) error {
	if t.Own <= 0 || t.Tile <= 0 {
		return fmt.Errorf("%s: invalid tiles %s", pass, t)
	}
	if t.Own > t.Tile {
		return fmt.Errorf("%s: tiles %s own more rows than a tile has invocations", pass, t)
	}
	threads := uint32(t.Tile)
	if threads > lim.MaxComputeInvocationsPerWorkgroup || threads > lim.MaxComputeWorkgroupSizeX {
		return fmt.Errorf("%s: tiles %s need %d invocations per workgroup, the device allows %d (x size %d)",
			pass, t, threads, lim.MaxComputeInvocationsPerWorkgroup, lim.MaxComputeWorkgroupSizeX)
	}
	if need := t.workgroupBytes(pass, headDim); need > uint64(lim.MaxComputeWorkgroupStorageSize) {
		return fmt.Errorf("%s: tiles %s need %d bytes of workgroup memory at head dim %d, the device allows %d",
			pass, t, need, headDim, lim.MaxComputeWorkgroupStorageSize)
	}
	return nil
}

// attentionTileChoices are tried in order, on GPUs (gpu) and on CPU adapters
// (cpu). Each tile row's element is loaded once for Own FMAs, so more owned
// rows means fewer loads per FMA; 16 is as many as the score phase's
// accumulators keep in registers. GPUs take 64-row tiles, 64 invocations per
// workgroup. On lavapipe, whose per-invocation loads are what costs (one per
// SIMD lane, where an address the same for all invocations is one load and a
// broadcast), 16-row tiles ran BenchmarkAttention about 1.4x faster than
// 64-row tiles and about 1.15x faster than 32-row ones (noisy, shared
// machine): a workgroup is then 2 SIMD batches of 8, and the causal diagonal's
// last tile wastes less. More owned rows (24, 32) were slower: their
// accumulators no longer stay in registers. The later choices fit 16 KiB at head dim
// 128 and beyond.
var attentionTileChoices = struct{ gpu, cpu []attentionTiles }{
	gpu: []attentionTiles{{16, 64}, {8, 64}, {8, 32}, {4, 32}, {4, 16}, {2, 16}, {2, 8}, {1, 8}},
	cpu: []attentionTiles{{16, 16}, {8, 16}, {8, 8}, {4, 8}, {2, 8}, {1, 8}},
}

// pickAttentionTiles returns the first choice for the adapter class (cpu: a
// CPU adapter such as lavapipe) that fits the device.
func pickAttentionTiles(pass attentionPass, headDim int, lim gpu.Limits, cpu bool) (attentionTiles, error) {
	choices := attentionTileChoices.gpu
	if cpu {
		choices = attentionTileChoices.cpu
	}
	for _, t := range choices {
		if t.check(pass, headDim, lim) == nil {
			return t, nil
		}
	}
	smallest := choices[len(choices)-1]
	return attentionTiles{}, fmt.Errorf("%s: head dim %d needs %d bytes of workgroup memory even with tiles %s, the device allows %d",
		pass, headDim, smallest.workgroupBytes(pass, headDim), smallest, lim.MaxComputeWorkgroupStorageSize)
}

// attentionOperand is one tensor argument with the element count its role needs.
type attentionOperand struct {
	name  string
	t     *gpu.Tensor
	elems int
}

func (o attentionOperand) check() error {
	t := o.t
	switch {
	case t == nil:
		return fmt.Errorf("%s is nil", o.name)
	case t.Buf == nil:
		return fmt.Errorf("%s has no buffer", o.name)
	case t.DType != gpu.F32:
		return fmt.Errorf("%s is %s, want f32", o.name, t.DType)
	case t.Offset%4 != 0:
		return fmt.Errorf("%s offset %d is not a multiple of 4 bytes", o.name, t.Offset)
	}
	for _, d := range t.Shape {
		if d < 0 {
			return fmt.Errorf("%s has a negative dimension in shape %v", o.name, t.Shape)
		}
	}
	if t.Len() != o.elems {
		return fmt.Errorf("%s has shape %v (%d elements), want %d elements", o.name, t.Shape, t.Len(), o.elems)
	}
	if end := t.Offset + t.Bytes(); end > t.Buf.Size() {
		return fmt.Errorf("%s (shape %v at byte %d) overruns its %d-byte buffer", o.name, t.Shape, t.Offset, t.Buf.Size())
	}
	return nil
}

// checkDispatchOperands validates the operands of one dispatch and the WebGPU
// rules on how its writable bindings may share buffers.
func checkDispatchOperands(dev *gpu.Device, inputs, outputs []attentionOperand) error {
	for _, o := range slices.Concat(inputs, outputs) {
		if err := o.check(); err != nil {
			return err
		}
		view, base := o.t.View()
		if limit := dev.Limits.MaxStorageBufferBindingSize; view.Size > limit {
			return fmt.Errorf("%s needs a %d-byte binding, over the device's maxStorageBufferBindingSize %d", o.name, view.Size, limit)
		}
		if uint64(base)+uint64(o.elems) > math.MaxUint32 {
			return fmt.Errorf("%s ends at element %d of its binding, beyond u32 indices", o.name, uint64(base)+uint64(o.elems))
		}
	}
	for i, out := range outputs {
		for _, in := range inputs {
			if out.t.Buf == in.t.Buf {
				return fmt.Errorf("output %s shares a buffer with input %s: WebGPU forbids binding one buffer both writable and read-only in a dispatch",
					out.name, in.name)
			}
		}
		for _, other := range outputs[:i] {
			if out.t.Buf != other.t.Buf {
				continue
			}
			a, _ := out.t.View()
			b, _ := other.t.View()
			if a.Offset < b.Offset+b.Size && b.Offset < a.Offset+a.Size {
				return fmt.Errorf("outputs %s (bytes %d..%d) and %s (bytes %d..%d) share a buffer and their aligned bindings overlap",
					out.name, out.t.Offset, out.t.Offset+out.t.Bytes(), other.name, other.t.Offset, other.t.Offset+other.t.Bytes())
			}
		}
	}
	return nil
}

// overlapping says whether two tensors share bytes of one buffer.
func overlapping(a, b *gpu.Tensor) bool {
	return a.Buf == b.Buf && a.Offset < b.Offset+b.Bytes() && b.Offset < a.Offset+a.Bytes()
}

// attentionBindings are the tensors of the eight storage bindings, in order
// (see attention.wgsl). The forward pass binds q in place of dout and lse.
type attentionBindings struct {
	q, k, v, rowFlags, dout, lse, outA, outB *gpu.Tensor
}

// AttentionForward records out = softmax(q k^T / sqrt(HeadDim) + causal and
// padding mask) v per head, and lse, the logsumexp of each (row, head)'s scaled
// scores, which AttentionBackward needs. out and lse are overwritten. See the
// comment at the top of this file for layouts.
func AttentionForward(rec *gpu.Recorder, s AttentionShape, q, k, v, mask, out, lse *gpu.Tensor) error {
	return attentionForward(rec, s, q, k, v, mask, out, lse, nil)
}

// AttentionBackward records the gradients dq, dk and dv of the attention
// AttentionForward computed, given dOut = dLoss/dout and the forward's lse
// (which must come from the same q, k, v and mask). dq, dk and dv are
// overwritten. dk and dv sum over the query heads that share each kv head.
//
// out is the forward's output: D_t = sum_e dOut*out, the row sum softmax's
// backward needs, is computed from it first into scratch, f32 [Tokens, Heads],
// with a sentinel on padding rows that stands in for the mask in the dk/dv
// pass; scratch's contents are not part of the API. D could also be summed as
// sum_u P dP (torch's form, equal) while dq is accumulated, but that costs the
// dq pass a second accumulator per head dimension.
func AttentionBackward(rec *gpu.Recorder, s AttentionShape, q, k, v, mask, out, lse, dOut *gpu.Tensor,
	dq, dk, dv *gpu.Tensor, scratch *gpu.Tensor) error {
	return attentionBackward(rec, s, q, k, v, mask, out, lse, dOut, dq, dk, dv, scratch, nil)
}

// attentionTiling chooses each pass's tiles; nil means pickAttentionTiles on the
// device's limits. Tests force small tiles to get many of them.
type attentionTiling func(attentionPass) attentionTiles

// attentionForward is AttentionForward with a tiling override.
func attentionForward(rec *gpu.Recorder, s AttentionShape, q, k, v, mask, out, lse *gpu.Tensor,
	tiles attentionTiling) error {
	pass := attentionForwardPass
	dev, err := checkAttentionCall(pass, rec, s)
	if err != nil {
		return err
	}
	T := s.Tokens()
	inputs := slices.Concat(attentionOperands(s, q, k, v), []attentionOperand{{"mask", mask, T}})
	outputs := []attentionOperand{
		{"out", out, T * s.Heads * s.HeadDim},
		{"lse", lse, T * s.Heads},
	}
	if err := checkDispatchOperands(dev, inputs, outputs); err != nil {
		return fmt.Errorf("%s: %w", pass, err)
	}
	kernel, err := prepareAttention(dev, pass, s, tiles)
	if err != nil {
		return err
	}
	return kernel.dispatch(rec, s, attentionBindings{q: q, k: k, v: v, rowFlags: mask, dout: q, lse: q, outA: out, outB: lse})
}

func attentionBackward(rec *gpu.Recorder, s AttentionShape, q, k, v, mask, out, lse, dOut *gpu.Tensor,
	dq, dk, dv *gpu.Tensor, scratch *gpu.Tensor, tiles attentionTiling) error {
	dev, err := checkAttentionCall(attentionQueryGradPass, rec, s)
	if err != nil {
		return err
	}
	T := s.Tokens()
	qElems, kvElems, rowElems := T*s.Heads*s.HeadDim, T*s.KVHeads*s.HeadDim, T*s.Heads
	qkv := attentionOperands(s, q, k, v)
	common := []attentionOperand{{"dOut", dOut, qElems}, {"lse", lse, rowElems}}
	dsum := attentionOperand{"scratch", scratch, rowElems}

	// D first, then the dq pass (which reads D through its second output
	// binding) and the dk/dv pass; WebGPU orders the storage accesses of
	// consecutive dispatches.
	const dsumOp = "attention backward (D)"
	dsumViews, dsumBases, err := bindActivationOperands(dsumOp, dev,
		activationOperand("dOut", dOut, qElems), activationOperand("out", out, qElems),
		activationOperand("mask", mask, T), activationOperand("scratch", scratch, rowElems))
	if err != nil {
		return err
	}
	err = checkDispatchOperands(dev, slices.Concat(qkv, common, []attentionOperand{{"mask", mask, T}}),
		[]attentionOperand{{"dq", dq, qElems}, dsum})
	if err != nil {
		return fmt.Errorf("%s: %w", attentionQueryGradPass, err)
	}
	err = checkDispatchOperands(dev, slices.Concat(qkv, common, []attentionOperand{dsum}),
		[]attentionOperand{{"dk", dk, kvElems}, {"dv", dv, kvElems}})
	if err != nil {
		return fmt.Errorf("%s: %w", attentionKeyValueGradPass, err)
	}
	// dq is not bound in the second pass, but writing dk or dv over it would
	// still lose it.
	for _, later := range []*gpu.Tensor{dk, dv} {
		if overlapping(dq, later) {
			return fmt.Errorf("attention backward: dq (bytes %d..%d) overlaps dk or dv (bytes %d..%d)",
				dq.Offset, dq.Offset+dq.Bytes(), later.Offset, later.Offset+later.Bytes())
		}
	}

	queryGrad, err := prepareAttention(dev, attentionQueryGradPass, s, tiles)
	if err != nil {
		return err
	}
	keyValueGrad, err := prepareAttention(dev, attentionKeyValueGradPass, s, tiles)
	if err != nil {
		return err
	}
	dsumKernel, err := dev.Kernel(attentionDsumShader, gpu.U32("WORKGROUP_SIZE", activationWorkgroupSize))
	if err != nil {
		return fmt.Errorf("%s: %w", dsumOp, err)
	}
	params := gpu.PackParams(uint32(rowElems), uint32(s.Heads), uint32(s.HeadDim),
		dsumBases[0], dsumBases[1], dsumBases[2], dsumBases[3])
	err = dispatchActivationKernel(dsumOp, gpu.KindReduction, rec, dev, dsumKernel, params, dsumViews,
		activationGroups(rowElems), activationWorkgroupSize, 0)
	if err != nil {
		return err
	}
	b := attentionBindings{q: q, k: k, v: v, rowFlags: mask, dout: dOut, lse: lse, outA: dq, outB: scratch}
	if err := queryGrad.dispatch(rec, s, b); err != nil {
		return err
	}
	b.rowFlags, b.outA, b.outB = scratch, dk, dv
	return keyValueGrad.dispatch(rec, s, b)
}

// checkAttentionCall checks the recorder and shape and returns the device.
func checkAttentionCall(pass attentionPass, rec *gpu.Recorder, s AttentionShape) (*gpu.Device, error) {
	if rec == nil {
		return nil, fmt.Errorf("%s: nil recorder", pass)
	}
	dev := rec.Device()
	if dev == nil {
		return nil, fmt.Errorf("%s: recorder has no device", pass)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", pass, err)
	}
	return dev, nil
}

// attentionOperands are q, k and v with the sizes s gives them.
func attentionOperands(s AttentionShape, q, k, v *gpu.Tensor) []attentionOperand {
	T := s.Tokens()
	return []attentionOperand{
		{"q", q, T * s.Heads * s.HeadDim},
		{"k", k, T * s.KVHeads * s.HeadDim},
		{"v", v, T * s.KVHeads * s.HeadDim},
	}
}

// attentionKernel is one pass compiled for a shape, with its tiles.
type attentionKernel struct {
	pass   attentionPass
	kernel *gpu.Kernel
	tiles  attentionTiles
	grid   [3]uint32
}

// prepareAttention picks (or checks) the pass's tiles and compiles its kernel,
// so that a call fails before it records anything.
func prepareAttention(dev *gpu.Device, pass attentionPass, s AttentionShape, tiling attentionTiling) (attentionKernel, error) {
	var t attentionTiles
	var err error
	if tiling != nil {
		t = tiling(pass)
		err = t.check(pass, s.HeadDim, dev.Limits)
	} else {
		t, err = pickAttentionTiles(pass, s.HeadDim, dev.Limits, dev.Info.Type == gpu.AdapterTypeCPU)
	}
	if err != nil {
		return attentionKernel{}, err
	}
	// Blocks of owned rows, then query heads (or kv heads for dk/dv), then
	// sequences.
	heads := s.Heads
	if pass == attentionKeyValueGradPass {
		heads = s.KVHeads
	}
	grid := [3]uint32{uint32((s.Seq + t.Own - 1) / t.Own), uint32(heads), uint32(s.Batch)}
	if limit := dev.Limits.MaxComputeWorkgroupsPerDimension; max(grid[0], grid[1], grid[2]) > limit {
		return attentionKernel{}, fmt.Errorf("%s: grid %v for shape %+v exceeds maxComputeWorkgroupsPerDimension %d", pass, grid, s, limit)
	}
	kernel, err := dev.Kernel(attentionShader,
		gpu.U32("PASS", int(pass)), gpu.U32("HEAD_DIM", s.HeadDim),
		gpu.U32("OWN_ROWS", t.Own), gpu.U32("TILE_ROWS", t.Tile))
	if err != nil {
		return attentionKernel{}, fmt.Errorf("%s: %w", pass, err)
	}
	return attentionKernel{pass: pass, kernel: kernel, tiles: t, grid: grid}, nil
}

// dispatch records the pass over validated operands.
func (k attentionKernel) dispatch(rec *gpu.Recorder, s AttentionShape, b attentionBindings) error {
	tensors := []*gpu.Tensor{b.q, b.k, b.v, b.rowFlags, b.dout, b.lse, b.outA, b.outB}
	bindings := make([]gpu.Binding, len(tensors))
	bases := make([]uint32, len(tensors))
	for i, x := range tensors {
		bindings[i], bases[i] = x.View()
	}
	words := append([]uint32{uint32(s.Seq), uint32(s.Heads), uint32(s.KVHeads), uint32(s.Heads / s.KVHeads)}, bases...)
	words = append(words, math.Float32bits(float32(1/math.Sqrt(float64(s.HeadDim)))), uint32(s.HeadDim))
	if err := rec.Dispatch(k.pass.kind(), k.kernel, gpu.PackParams(words...), bindings, k.grid[0], k.grid[1], k.grid[2]); err != nil {
		return fmt.Errorf("%s: %w", k.pass, err)
	}
	return nil
}

// WriteAttentionMask uploads an HF attention_mask (1 for real tokens, 0 for
// padding) into dst, an f32 tensor of len(mask) elements, as 1.0 and 0.0.
func WriteAttentionMask(dst *gpu.Tensor, mask []int32) error {
	if dst == nil || dst.Buf == nil {
		return errors.New("write attention mask: no destination tensor")
	}
	if dst.DType != gpu.F32 || dst.Len() != len(mask) {
		return fmt.Errorf("write attention mask: %d values into a %s tensor of shape %v, want f32 with %d elements",
			len(mask), dst.DType, dst.Shape, len(mask))
	}
	values := make([]float32, len(mask))
	for i, m := range mask {
		switch m {
		case 0:
		case 1:
			values[i] = 1
		default:
			return fmt.Errorf("write attention mask: value %d at index %d, want 0 or 1", m, i)
		}
	}
	return dst.Upload(values)
}
