package model

import (
	"errors"
	"fmt"
	"math"

	"github.com/sparselora/sparselora/gpu"
)

// The LM head with its cross-entropy loss (HF semantics, SPEC section 3): the
// logits of token t predict the label of token t+1 of the same sequence, and the
// loss is the mean of logsumexp(z_t) - z_t[target] over the tokens that have a
// target. Vocabularies of 128k entries make a [tokens x vocab] f32 array too big
// to keep (or even to bind), so forward and backward walk the vocabulary in
// chunks of columns: each chunk's logits come from a GEMM into a reused scratch
// array, forward folds them into per-row online logsumexp statistics, and
// backward recomputes them, turns them into dz in place and accumulates dz W into
// dh (and dz^T h into dW when asked). The GEMMs gather the rows they run on
// through an index list, so the logits scratch holds only those rows. The
// kernels are in shaders/cross_entropy.wgsl.

// IgnoreLabel is the label of a token that is not a target (HF's ignore_index).
const IgnoreLabel = -100

// NoTarget marks a token without a target in the array Targets builds.
const NoTarget = math.MaxUint32

const (
	crossEntropyShader = "cross_entropy.wgsl"
	// crossEntropyWorkgroupSize is injected as WORKGROUP_SIZE; the tree
	// reductions need a power of two.
	crossEntropyWorkgroupSize = 256

	// lmHeadScratchBytes caps a chunk's logits: large enough that each GEMM
	// fills the GPU, small next to a model's activations.
	lmHeadScratchBytes = 64 << 20
	// lmHeadChunkAlign keeps default chunks whole multiples of the largest GEMM
	// tile's width, so no GEMM tile is mostly empty.
	lmHeadChunkAlign = 128

	// The state arrays of the shader, in units of rows (STATE_* there).
	stateLSE     = 3
	stateRowLoss = 4
	stateMean    = 5
)

// crossEntropyOp values are the OP_* consts of cross_entropy.wgsl.
type crossEntropyOp int

const (
	opChunkStats crossEntropyOp = iota
	opFinish
	opGrad
)

func (op crossEntropyOp) String() string {
	return [...]string{"chunk statistics", "finish", "gradient"}[op]
}

// Targets builds the per-token target array of a batch of batch sequences of seq
// tokens from labels [batch*seq] (row-major): target[t] is labels[t+1] when
// token t+1 is in the same sequence and is not IgnoreLabel, NoTarget otherwise
// (always for the last token of a sequence). It also returns the number of
// targets, whose inverse scales the loss. Every label, including the first of
// each sequence which HF never uses, must be IgnoreLabel or in [0, vocab): an
// out-of-range label means the data does not match the model's vocabulary.
func Targets(labels []int32, batch, seq, vocab int) ([]uint32, int, error) {
	if batch < 0 || seq < 0 {
		return nil, 0, fmt.Errorf("targets: negative batch shape %d x %d", batch, seq)
	}
	if vocab <= 0 || uint64(vocab) >= NoTarget {
		return nil, 0, fmt.Errorf("targets: vocabulary size %d out of range", vocab)
	}
	if seq > 0 && batch > math.MaxInt/seq || len(labels) != batch*seq {
		return nil, 0, fmt.Errorf("targets: %d labels for a batch of %d sequences of %d tokens", len(labels), batch, seq)
	}
	for i, label := range labels {
		if label != IgnoreLabel && (label < 0 || int(label) >= vocab) {
			return nil, 0, fmt.Errorf("targets: label %d at sequence %d, position %d is outside the vocabulary [0, %d) and is not the ignore label %d",
				label, i/seq, i%seq, vocab, IgnoreLabel)
		}
	}
	targets := make([]uint32, len(labels))
	count := 0
	for i := range targets {
		targets[i] = NoTarget
		if i%seq == seq-1 {
			continue // the last token of a sequence predicts nothing
		}
		if next := labels[i+1]; next != IgnoreLabel {
			targets[i] = uint32(next)
			count++
		}
	}
	return targets, count, nil
}

// WriteTargets uploads a target array into dst, a tensor of len(targets) 4-byte
// words (DType F32 serves as the container; the words are u32).
func WriteTargets(dst *gpu.Tensor, targets []uint32) error {
	if dst == nil || dst.Buf == nil {
		return errors.New("write targets: no destination tensor")
	}
	if dst.DType != gpu.F32 || dst.Len() != len(targets) {
		return fmt.Errorf("write targets: %d targets into a %s tensor of shape %v, want %d 4-byte words",
			len(targets), dst.DType, dst.Shape, len(targets))
	}
	return dst.Buf.Write(dst.Offset, gpu.U32Bytes(targets))
}

// LMHeadOption adjusts NewLMHead.
type LMHeadOption func(*lmHeadConfig)

type lmHeadConfig struct {
	chunkColumns int
}

// WithChunkColumns sets how many vocabulary columns each chunk holds instead of
// the size derived from the scratch budget and the device's binding limit. Tests
// use it to get several chunks and a remainder from a small vocabulary.
func WithChunkColumns(columns int) LMHeadOption {
	return func(c *lmHeadConfig) { c.chunkColumns = columns }
}

// LMHead computes logits = h W^T and the cross-entropy loss with its gradients
// for up to a fixed number of rows (tokens), a hidden size and a vocabulary, on
// the rows a pass names (RowSet), so that rows without a target cost
// nothing (training names only the scored rows: context and padding rows have
// no target, so neither their logits nor their gradient is needed). W is [vocab, hidden], f32 or BF16; tied embeddings pass the
// embedding table. The input gradient is always computed, the weight gradient
// on request. It owns a [tokens x chunk] logits scratch array and per-row
// statistics that Forward leaves for Backward, so one LMHead serves one
// forward/backward pair at a time.
type LMHead struct {
	dev                   *gpu.Device
	tokens, hidden, vocab int
	chunk                 int
	maxGroups             uint32

	// logits is the [tokens, chunk] scratch array of one chunk's logits
	// (forward) or logit gradients (backward).
	logits *gpu.Tensor
	// state holds the shader's per-token arrays (running max, running sum,
	// target logit, logsumexp, loss) and the mean loss: 5*tokens + 1 floats.
	state *gpu.Tensor

	// forwarded guards Backward, which reads the logsumexp Forward leaves in state;
	// rows is the row count of that Forward, which lays out state.
	forwarded bool
	rows      int
}

// NewLMHead allocates an LM head for tokens rows (batch * sequence length) of
// hidden features and a vocabulary of vocab entries.
func NewLMHead(dev *gpu.Device, tokens, hidden, vocab int, opts ...LMHeadOption) (*LMHead, error) {
	if dev == nil {
		return nil, errors.New("new LM head: nil device")
	}
	if tokens <= 0 || hidden <= 0 || vocab <= 0 {
		return nil, fmt.Errorf("new LM head: sizes must be positive: %d tokens, hidden size %d, vocabulary %d", tokens, hidden, vocab)
	}
	if uint64(vocab) >= NoTarget || uint64(tokens)*5+1 > math.MaxUint32 {
		return nil, fmt.Errorf("new LM head: %d tokens and vocabulary %d overflow u32 indices", tokens, vocab)
	}
	var cfg lmHeadConfig
	for _, opt := range opts {
		opt(&cfg)
	}
	chunk, err := chunkColumns(dev.Limits, tokens, hidden, vocab, cfg.chunkColumns)
	if err != nil {
		return nil, fmt.Errorf("new LM head: %w", err)
	}
	l := &LMHead{dev: dev, tokens: tokens, hidden: hidden, vocab: vocab, chunk: chunk,
		maxGroups: dev.Limits.MaxComputeWorkgroupsPerDimension}
	if l.logits, err = dev.NewTensor(gpu.F32, "LM head logits chunk", tokens, chunk); err != nil {
		return nil, fmt.Errorf("new LM head: %w", err)
	}
	if l.state, err = dev.NewTensor(gpu.F32, "LM head loss statistics", 5*tokens+1); err != nil {
		l.Release()
		return nil, fmt.Errorf("new LM head: %w", err)
	}
	return l, nil
}

// chunkColumns picks the vocabulary chunk width: requested when positive
// (clamped to the vocabulary), else the widest chunk whose logits fit the scratch
// budget and whose f32 weight rows fit one storage binding.
func chunkColumns(lim gpu.Limits, tokens, hidden, vocab, requested int) (int, error) {
	maxBinding := lim.MaxStorageBufferBindingSize
	if requested < 0 {
		return 0, fmt.Errorf("requested chunk width %d is negative", requested)
	}
	if requested > 0 {
		cols := min(requested, vocab)
		if bytes := 4 * uint64(tokens) * uint64(cols); bytes > maxBinding {
			return 0, fmt.Errorf("a chunk of %d columns x %d tokens needs %d bytes, over the device's maxStorageBufferBindingSize %d",
				cols, tokens, bytes, maxBinding)
		}
		return cols, nil
	}
	cols := min(lmHeadScratchBytes, maxBinding) / (4 * uint64(tokens))
	// A weight chunk is bound from an aligned offset up to its end, which can add
	// almost one alignment unit in front of it.
	align := uint64(max(lim.MinStorageBufferOffsetAlignment, 4))
	if maxBinding > align {
		cols = min(cols, (maxBinding-align)/(4*uint64(hidden)))
	} else {
		cols = 0
	}
	cols = min(cols, uint64(vocab))
	if cols == 0 {
		return 0, fmt.Errorf("not one vocabulary column of %d tokens (hidden size %d) fits the device's maxStorageBufferBindingSize %d",
			tokens, hidden, maxBinding)
	}
	switch {
	case cols == uint64(vocab):
	case cols >= lmHeadChunkAlign:
		cols -= cols % lmHeadChunkAlign
	case cols > 1:
		// Even chunks keep bf16 weight chunks on whole u32 words for any hidden size.
		cols -= cols % 2
	}
	return int(cols), nil
}

// ChunkColumns is the number of vocabulary columns per chunk.
func (l *LMHead) ChunkColumns() int { return l.chunk }

// LSE is the logsumexp of the logits of each row the last Forward processed
// ([rows.Count], in their order), as of its execution.
func (l *LMHead) LSE() *gpu.Tensor { return l.stateArray(stateLSE) }

// RowLosses is the loss of each row the last Forward processed (logsumexp -
// target logit, 0 for rows without a target), as of its execution.
func (l *LMHead) RowLosses() *gpu.Tensor { return l.stateArray(stateRowLoss) }

func (l *LMHead) stateArray(index int) *gpu.Tensor {
	return &gpu.Tensor{Buf: l.state.Buf, Offset: l.state.Offset + uint64(4*index*l.rows), Shape: []int{l.rows}, DType: gpu.F32}
}

// Release frees the scratch memory.
func (l *LMHead) Release() {
	if l == nil {
		return
	}
	l.logits.Release()
	l.state.Release()
	l.logits, l.state = nil, nil
}

// Forward records the loss over the rows named by rows: the mean over targets
// of logsumexp(z_r) - z_r[targets[i]] with z_r = h_r W^T for the i-th processed
// row r, into loss [1]. h is [n, hidden] f32 holding every named row, w
// [vocab, hidden] f32 or BF16, targets rows.Count u32 words (target of the
// i-th processed row at i, NoTarget for none; see Targets and WriteTargets),
// and targetCount the N the mean divides by (the total over micro-batches when
// accumulating gradients). With N = 0 the loss is 0 rather than HF's NaN, so a
// batch without targets adds nothing. It also keeps the per-row logsumexp for
// Backward.
func (l *LMHead) Forward(rec *gpu.Recorder, h *gpu.Tensor, rows RowSet, w, targets *gpu.Tensor, targetCount int, loss *gpu.Tensor) error {
	const op = "LM head forward"
	if err := l.checkStep(op, rec, h, rows, w, targets, targetCount); err != nil {
		return err
	}
	if err := checkHeadOperand(op, "loss", loss, 1); err != nil {
		return err
	}
	if loss.DType != gpu.F32 {
		return fmt.Errorf("%s: loss is %s, want f32", op, loss.DType)
	}
	l.forwarded, l.rows = true, rows.Count
	if rows.Count == 0 {
		rec.Clear(loss.Buf, loss.Offset, 4)
		return nil
	}
	for v0 := 0; v0 < l.vocab; v0 += l.chunk {
		cols := min(l.chunk, l.vocab-v0)
		if err := l.chunkLogits(rec, h, rows, w, v0, cols); err != nil {
			return fmt.Errorf("%s: logits of columns %d..%d: %w", op, v0, v0+cols, err)
		}
		first := uint32(0)
		if v0 == 0 {
			first = 1
		}
		if err := l.dispatch(rec, opChunkStats, targets, cols, v0, first, uint32(rows.Count)); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	if err := l.dispatch(rec, opFinish, targets, 0, 0, math.Float32bits(lossScale(targetCount)), 1); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	// A copy rather than a kernel binding lets loss live in any buffer, even the
	// targets' one, which a writable binding could not share.
	rec.Copy(loss.Buf, loss.Offset, l.state.Buf, l.state.Offset+uint64(4*stateMean*rows.Count), 4)
	return nil
}

// Backward records the gradients of the loss of the last Forward, recorded
// with the same h, rows, w, targets and targetCount (it reads that Forward's
// logsumexp): dh_r = d(loss)/dh_r overwrites the named rows of dh ([n,
// hidden] f32, which must not overlap h: h is read again for every chunk after
// dh is first written); other rows of dh are left as they are. When dW is not
// nil, the weight gradient over the processed rows is added to it: dW [vocab,
// hidden] f32 += dz^T h, chunk by chunk, with dz the logits' gradient (for a
// trainable head; the frozen head of LoRA training passes nil).
func (l *LMHead) Backward(rec *gpu.Recorder, h *gpu.Tensor, rows RowSet, w, targets *gpu.Tensor, targetCount int, dh, dW *gpu.Tensor) error {
	const op = "LM head backward"
	if err := l.checkStep(op, rec, h, rows, w, targets, targetCount); err != nil {
		return err
	}
	if !l.forwarded || l.rows != rows.Count {
		return fmt.Errorf("%s: no Forward over %d rows recorded before: the gradient needs its logsumexp", op, rows.Count)
	}
	if err := checkHeadOperand(op, "dh", dh, -1); err != nil {
		return err
	}
	if dh.DType != gpu.F32 || headRowLength(dh) != l.hidden || dh.Len() < rows.Count*l.hidden {
		return fmt.Errorf("%s: dh is %s of shape %v, want f32 [>= %d, %d]", op, dh.DType, dh.Shape, rows.Count, l.hidden)
	}
	if headOperandsOverlap(dh, h) {
		return fmt.Errorf("%s: dh (bytes %d..%d) overlaps h (bytes %d..%d)", op, dh.Offset, dh.Offset+dh.Bytes(), h.Offset, h.Offset+h.Bytes())
	}
	if dW != nil {
		if err := checkHeadOperand(op, "dW", dW, l.vocab*l.hidden); err != nil {
			return err
		}
		if dW.DType != gpu.F32 || headRowLength(dW) != l.hidden {
			return fmt.Errorf("%s: dW is %s of shape %v, want f32 [%d, %d]", op, dW.DType, dW.Shape, l.vocab, l.hidden)
		}
		if dW.Buf == h.Buf || dW.Buf == w.Buf {
			return fmt.Errorf("%s: dW shares a buffer with h or the weight, which a GEMM cannot bind both writable and read-only", op)
		}
	}
	if rows.Count == 0 {
		return nil
	}
	invCount := math.Float32bits(lossScale(targetCount))
	for v0 := 0; v0 < l.vocab; v0 += l.chunk {
		cols := min(l.chunk, l.vocab-v0)
		if err := l.chunkLogits(rec, h, rows, w, v0, cols); err != nil {
			return fmt.Errorf("%s: logits of columns %d..%d: %w", op, v0, v0+cols, err)
		}
		if err := l.dispatch(rec, opGrad, targets, cols, v0, invCount, uint32(rows.Count)); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		beta := float32(1)
		if v0 == 0 {
			beta = 0 // the first chunk overwrites dh, so it may hold anything
		}
		err := gpu.Gemm(rec, gpu.GemmArgs{
			A: l.logits, B: weightRows(w, v0, cols, l.hidden), C: dh,
			M: rows.Count, N: l.hidden, K: cols, LDA: l.chunk, Beta: beta, ScatterCM: rows.List,
		})
		if err != nil {
			return fmt.Errorf("%s: dh from columns %d..%d: %w", op, v0, v0+cols, err)
		}
		if dW == nil {
			continue
		}
		// dW[v0:v0+cols] += dz^T h: dz is stored [rows, ld] = K x M (TN), and h's
		// rows are the K index, gathered through the list.
		err = gpu.Gemm(rec, gpu.GemmArgs{
			A: l.logits, B: h, C: weightRows(dW, v0, cols, l.hidden), ATrans: true,
			M: cols, N: l.hidden, K: rows.Count, LDA: l.chunk, Beta: 1, GatherK: rows.List,
		})
		if err != nil {
			return fmt.Errorf("%s: dW of columns %d..%d: %w", op, v0, v0+cols, err)
		}
	}
	return nil
}

// Logits records out = h W^T in full, for vocabularies small enough that out
// fits one storage binding (conformance tests, generation). h is [rows, hidden]
// f32 for any number of rows, out [rows, vocab] f32.
func (l *LMHead) Logits(rec *gpu.Recorder, h, w, out *gpu.Tensor) error {
	const op = "LM head logits"
	if rec == nil {
		return fmt.Errorf("%s: nil recorder", op)
	}
	if err := checkHeadOperand(op, "h", h, -1); err != nil {
		return err
	}
	if h.DType != gpu.F32 || headRowLength(h) != l.hidden {
		return fmt.Errorf("%s: h is %s of shape %v, want f32 [rows, %d]", op, h.DType, h.Shape, l.hidden)
	}
	rows := h.Len() / l.hidden
	if err := l.checkWeight(op, w); err != nil {
		return err
	}
	if err := checkHeadOperand(op, "out", out, rows*l.vocab); err != nil {
		return err
	}
	if out.DType != gpu.F32 || headRowLength(out) != l.vocab {
		return fmt.Errorf("%s: out is %s of shape %v, want f32 [%d, %d]", op, out.DType, out.Shape, rows, l.vocab)
	}
	if rows == 0 {
		return nil
	}
	for v0 := 0; v0 < l.vocab; v0 += l.chunk {
		cols := min(l.chunk, l.vocab-v0)
		// The view starts at column v0 of row 0 and ends at the chunk's last
		// column of the last row, so only what the chunk writes is bound.
		columns := &gpu.Tensor{Buf: out.Buf, Offset: out.Offset + uint64(4*v0), Shape: []int{(rows-1)*l.vocab + cols}, DType: gpu.F32}
		err := gpu.Gemm(rec, gpu.GemmArgs{
			A: h, B: weightRows(w, v0, cols, l.hidden), C: columns, BTrans: true,
			M: rows, N: cols, K: l.hidden, LDC: l.vocab,
		})
		if err != nil {
			return fmt.Errorf("%s: columns %d..%d: %w", op, v0, v0+cols, err)
		}
	}
	return nil
}

// chunkLogits records the logits of vocabulary columns [v0, v0+cols) of the
// processed rows into the scratch array (compact rows, row stride l.chunk).
func (l *LMHead) chunkLogits(rec *gpu.Recorder, h *gpu.Tensor, rows RowSet, w *gpu.Tensor, v0, cols int) error {
	return gpu.Gemm(rec, gpu.GemmArgs{
		A: h, B: weightRows(w, v0, cols, l.hidden), C: l.logits, BTrans: true,
		M: rows.Count, N: cols, K: l.hidden, LDC: l.chunk, GatherAM: rows.List,
	})
}

// weightRows is the view of rows [row0, row0+rows) of a [vocab, hidden] weight,
// so a binding spans one chunk, not a whole (possibly multi-GiB) table.
// checkWeight ensures a BF16 chunk starts on a u32 word.
func weightRows(w *gpu.Tensor, row0, rows, hidden int) *gpu.Tensor {
	if w.DType == gpu.Quantized {
		return &gpu.Tensor{Buf: w.Buf, Offset: w.Offset + uint64(row0)*weightRowBytes(w, hidden), Shape: []int{rows, hidden}, DType: w.DType, Affine: w.Affine}
	}
	return &gpu.Tensor{Buf: w.Buf, Offset: w.Offset + w.DType.Bytes(row0*hidden), Shape: []int{rows, hidden}, DType: w.DType}
}

// weightRowBytes is the storage of one row of hidden elements of a weight
// (whole u32 words for bf16; codes, scales and biases when quantized).
func weightRowBytes(w *gpu.Tensor, hidden int) uint64 {
	if w.DType == gpu.Quantized {
		return uint64(4 * w.Affine.RowWords(hidden))
	}
	return w.DType.Bytes(hidden)
}

// dispatch records one cross_entropy.wgsl op. extra is the params word at offset
// 28 (first or inv_count); groups is the number of workgroups (one per row, or 1
// for FINISH).
func (l *LMHead) dispatch(rec *gpu.Recorder, op crossEntropyOp, targets *gpu.Tensor, cols, col0 int, extra, groups uint32) error {
	kernel, err := l.dev.Kernel(crossEntropyShader,
		gpu.U32("OP", int(op)), gpu.U32("WORKGROUP_SIZE", crossEntropyWorkgroupSize))
	if err != nil {
		return fmt.Errorf("%s kernel: %w", op, err)
	}
	logitsView, logitsBase := l.logits.View()
	stateView, stateBase := l.state.View()
	targetsView, targetsBase := targets.View()
	params := gpu.PackParams(
		uint32(l.rows), uint32(cols), uint32(l.chunk), uint32(col0),
		logitsBase, stateBase, targetsBase, extra,
	)
	gx := min(groups, l.maxGroups)
	gy := (groups + gx - 1) / gx
	if gy > l.maxGroups {
		return fmt.Errorf("%s kernel: %d rows exceed a %d x %d workgroup grid", op, groups, l.maxGroups, l.maxGroups)
	}
	if err := rec.Dispatch(gpu.KindLoss, kernel, params, []gpu.Binding{logitsView, stateView, targetsView}, gx, gy, 1); err != nil {
		return fmt.Errorf("%s kernel: %w", op, err)
	}
	return nil
}

// checkStep validates the operands Forward and Backward share.
func (l *LMHead) checkStep(op string, rec *gpu.Recorder, h *gpu.Tensor, rows RowSet, w, targets *gpu.Tensor, targetCount int) error {
	if l == nil || l.logits == nil {
		return fmt.Errorf("%s: LM head is nil or released", op)
	}
	if rec == nil {
		return fmt.Errorf("%s: nil recorder", op)
	}
	if rows.Count < 0 || rows.Count > l.tokens {
		return fmt.Errorf("%s: %d rows, want 0..%d (the head's size)", op, rows.Count, l.tokens)
	}
	if err := checkHeadOperand(op, "h", h, -1); err != nil {
		return err
	}
	if h.DType != gpu.F32 || headRowLength(h) != l.hidden || h.Len() < rows.Count*l.hidden {
		return fmt.Errorf("%s: h is %s of shape %v, want f32 [>= %d, %d]", op, h.DType, h.Shape, rows.Count, l.hidden)
	}
	if err := l.checkWeight(op, w); err != nil {
		return err
	}
	if err := checkHeadOperand(op, "targets", targets, -1); err != nil {
		return err
	}
	if targets.Len() < rows.Count {
		return fmt.Errorf("%s: %d targets for %d rows", op, targets.Len(), rows.Count)
	}
	if targets.DType != gpu.F32 {
		return fmt.Errorf("%s: targets is %s, want 4-byte words (f32 container of u32)", op, targets.DType)
	}
	if targetCount < 0 {
		return fmt.Errorf("%s: negative target count %d", op, targetCount)
	}
	return nil
}

func (l *LMHead) checkWeight(op string, w *gpu.Tensor) error {
	if err := checkHeadOperand(op, "weight", w, l.vocab*l.hidden); err != nil {
		return err
	}
	if headRowLength(w) != l.hidden {
		return fmt.Errorf("%s: weight has shape %v, want [%d, %d]", op, w.Shape, l.vocab, l.hidden)
	}
	if w.DType == gpu.BF16 && l.hidden%2 == 1 && l.chunk%2 == 1 && l.chunk < l.vocab {
		return fmt.Errorf("%s: a bf16 weight with odd hidden size %d needs an even chunk width, not %d, so chunks start on whole u32 words",
			op, l.hidden, l.chunk)
	}
	return nil
}

// checkHeadOperand checks that t is a tensor of want elements (any count when want
// is negative) lying inside its buffer at a 4-byte offset.
func checkHeadOperand(op, name string, t *gpu.Tensor, want int) error {
	switch {
	case t == nil:
		return fmt.Errorf("%s: %s is nil", op, name)
	case t.Buf == nil:
		return fmt.Errorf("%s: %s has no buffer", op, name)
	case t.Offset%4 != 0:
		return fmt.Errorf("%s: %s offset %d is not a multiple of 4 bytes", op, name, t.Offset)
	case want >= 0 && t.Len() != want:
		return fmt.Errorf("%s: %s has shape %v (%d elements), want %d elements", op, name, t.Shape, t.Len(), want)
	}
	for _, s := range t.Shape {
		if s < 0 {
			return fmt.Errorf("%s: %s has a negative dimension in shape %v", op, name, t.Shape)
		}
	}
	if end := t.Offset + t.Bytes(); end > t.Buf.Size() {
		return fmt.Errorf("%s: %s (shape %v at byte %d) overruns its %d-byte buffer", op, name, t.Shape, t.Offset, t.Buf.Size())
	}
	return nil
}

// headRowLength is the size of the last dimension (1 for a scalar).
func headRowLength(t *gpu.Tensor) int {
	if len(t.Shape) == 0 {
		return 1
	}
	return t.Shape[len(t.Shape)-1]
}

// headOperandsOverlap says whether two non-empty tensors share bytes of one buffer.
func headOperandsOverlap(a, b *gpu.Tensor) bool {
	if a.Buf != b.Buf || a.Len() == 0 || b.Len() == 0 {
		return false
	}
	return a.Offset < b.Offset+b.Bytes() && b.Offset < a.Offset+a.Bytes()
}

// lossScale is the loss scale 1/N, 0 for N = 0.
func lossScale(n int) float32 {
	if n == 0 {
		return 0
	}
	return float32(1 / float64(n))
}
