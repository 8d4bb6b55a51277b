package model

import (
	"context"
	"fmt"
	"math"

	"github.com/sparselora/sparselora/gpu"
)

const embeddingShader = "embedding.wgsl"

// EmbeddingForward records x[t, :] = table[ids[t], :] for t < tokens: the token
// embedding lookup. table is the frozen [vocab, cols] embedding, f32, bf16 or
// quantized (codes read in the kernel).
// ids holds tokens token ids as raw u32 bits in an f32-typed tensor (write them
// with Buffer.Write and gpu.U32Bytes), as the loss targets are kept. x is f32
// [tokens, cols].
//
// Ids are validated by the host's data loader; an id >= vocab here yields a
// zero row rather than a read out of bounds. A table larger than the adapter's
// maxStorageBufferBindingSize is bound in blocks of rows, one dispatch each.
func EmbeddingForward(rec *gpu.Recorder, table, ids, x *gpu.Tensor, tokens, cols int) error {
	return embeddingForward(rec, table, ids, x, tokens, cols, 0, 0)
}

// embeddingForward is EmbeddingForward with the grid's per-dimension workgroup
// limit and the storage binding size limit as arguments (0: the device's), so
// tests reach 2-D grids and several table blocks with small tensors.
func embeddingForward(rec *gpu.Recorder, table, ids, x *gpu.Tensor, tokens, cols int, gridLimit uint32, bindingLimit uint64) error {
	const op = "EmbeddingForward"
	if tokens < 0 || cols < 1 {
		return fmt.Errorf("%s: %d tokens of %d columns, want tokens >= 0 and cols >= 1", op, tokens, cols)
	}
	if err := checkU32Elements(op, tokens, cols); err != nil {
		return err
	}
	if table == nil || len(table.Shape) != 2 || table.Shape[1] != cols {
		shape := "nil"
		if table != nil {
			shape = fmt.Sprint(table.Shape)
		}
		return fmt.Errorf("%s: table has shape %s, want [vocab, %d]", op, shape, cols)
	}
	vocab := table.Shape[0]
	if vocab < 1 {
		return fmt.Errorf("%s: the table has no rows", op)
	}
	if err := checkU32Elements(op, vocab, cols); err != nil {
		return err
	}
	if err := checkKernelOperand(op, weightOperand("table", table, vocab*cols)); err != nil {
		return err
	}
	dev, err := recorderDevice(op, rec)
	if err != nil {
		return err
	}
	blockRows, err := embeddingBlockRows(table, vocab, cols, dev.Limits, bindingLimit)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	kernel, err := dev.Kernel(embeddingShader, append([]gpu.Const{
		gpu.U32("WORKGROUP_SIZE", activationWorkgroupSize), gpu.Bool("TABLE_BF16", table.DType == gpu.BF16)},
		gpu.AffineConsts(table)...)...)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	n := tokens * cols
	rowWords, scaleOff := affineRowLayout(table, cols)
	for start := 0; start < vocab; start += blockRows {
		rows := min(blockRows, vocab-start)
		block := weightRows(table, start, rows, cols)
		views, bases, err := bindActivationOperands(op, dev,
			weightOperand("table", block, rows*cols), activationOperand("ids", ids, tokens), activationOperand("x", x, n))
		if err != nil || n == 0 {
			return err
		}
		zeroInvalid := uint32(0)
		if start == 0 {
			zeroInvalid = 1
		}
		params := gpu.PackParams(uint32(n), uint32(cols), uint32(vocab), uint32(start), uint32(rows),
			bases[0], bases[1], bases[2], zeroInvalid, rowWords, scaleOff)
		if err := dispatchActivationKernel(op, gpu.KindEmbedding, rec, dev, kernel, params, views, activationGroups(n), activationWorkgroupSize, gridLimit); err != nil {
			return err
		}
	}
	return nil
}

// embeddingBlockRows is the number of table rows bound per dispatch: all of
// them when the table fits one storage binding (bindingLimit, or the adapter's
// limit when 0), else as many as fit, even for bf16 so that every block starts
// on a whole u32 word.
func embeddingBlockRows(table *gpu.Tensor, vocab, cols int, limits gpu.Limits, bindingLimit uint64) (int, error) {
	limit := limits.MaxStorageBufferBindingSize
	if bindingLimit != 0 {
		limit = min(limit, bindingLimit)
	}
	// A block's binding may start up to one alignment below the block.
	align := uint64(max(limits.MinStorageBufferOffsetAlignment, 4))
	if table.Bytes()+align <= limit {
		return vocab, nil
	}
	rowBytes := uint64(4 * cols)
	switch table.DType {
	case gpu.BF16:
		rowBytes = uint64(2 * cols)
	case gpu.Quantized:
		rowBytes = weightRowBytes(table, cols)
	}
	rows := uint64(0)
	if limit > align {
		rows = (limit - align) / rowBytes
	}
	if table.DType == gpu.BF16 {
		rows &^= 1
	}
	if rows == 0 {
		return 0, fmt.Errorf("table rows of %d bytes do not fit a %d-byte storage binding", rowBytes, limit)
	}
	return int(rows), nil
}

// EmbeddingOnHost reports whether a model whose loader is asked to keep the
// embedding table in host memory (requested, LoadOptions.HostEmbedding) does:
// only when the LM head is untied, since a tied head multiplies by the table
// on the GPU.
func (c *Config) EmbeddingOnHost(requested bool) bool { return requested && !c.TieWordEmbeddings }

// Embedding is a frozen token embedding table [Vocab, Cols] kept in host
// memory. A LoRA run with an untied LM head only looks the table up (one row
// per token), so rather than holding all of it on the GPU (1 GiB in bf16 at
// LLaMA-3-8B) the host gathers the rows of a batch's tokens and uploads them
// (Workspace.Load and UseStaged, the Generator). Lookup gives exactly the
// rows EmbeddingForward gives for the same table on the GPU: f32 as stored,
// bf16 widened, quantized rows dequantized as the kernel's load_affine does.
type Embedding struct {
	Vocab, Cols int
	// One of them holds the table.
	f32    []float32
	bf16   []uint16
	affine *gpu.AffineWeight
	// fused says how the device's kernel rounds affine's s*q + b
	// (gpu.AffineWeight.DequantizeRow).
	fused bool
}

// newEmbedding keeps a table [vocab, cols] read or drawn on the host: the
// quantized weight w as it is (dequantized as dev's kernel does), or else
// values in dtype (F32, or BF16 rounded as Tensor.Upload rounds).
func newEmbedding(dev *gpu.Device, w *gpu.AffineWeight, values []float32, vocab, cols int, dtype gpu.DType) (*Embedding, error) {
	if w != nil {
		if err := w.Check(); err != nil {
			return nil, err
		}
		e := &Embedding{Vocab: w.Out, Cols: w.In, affine: w, fused: true}
		if w.Format.Scales == gpu.ScaleF32 { // else s*q is exact and both roundings agree
			var err error
			if e.fused, err = kernelFusesMultiplyAdd(dev); err != nil {
				return nil, err
			}
		}
		return e, nil
	}
	if len(values) != vocab*cols {
		return nil, fmt.Errorf("%d values, want %d x %d", len(values), vocab, cols)
	}
	e := &Embedding{Vocab: vocab, Cols: cols}
	switch dtype {
	case gpu.F32:
		e.f32 = values
	case gpu.BF16:
		e.bf16 = make([]uint16, len(values))
		for i, v := range values {
			e.bf16[i] = gpu.ToBF16(v)
		}
	default:
		return nil, fmt.Errorf("dtype %s (want f32 or bf16)", dtype)
	}
	return e, nil
}

// kernelFusesMultiplyAdd reports whether dev's embedding kernel rounds a
// quantized weight's s*q + b once (a fused multiply-add) or twice (product,
// then sum): WGSL's fma allows either. It looks up a one-row table whose
// first weight tells them apart: s = 1 + 2^-23 (an f32 scale), q = 3 and
// b = -3, where s*q = 3 + 3*2^-23 is halfway between two float32 values, so
// that rounding it first gives 2^-21 and not 3*2^-23.
func kernelFusesMultiplyAdd(dev *gpu.Device) (bool, error) {
	f := gpu.Affine{Bits: 8, Group: 32, Scales: gpu.ScaleF32}
	w := &gpu.AffineWeight{Out: 1, In: f.Group, Format: f, Codes: make([]uint32, f.CodeWords(f.Group)),
		Scales: []float32{math.Nextafter32(1, 2)}, Biases: []float32{-3}}
	w.Codes[0] = 3
	table, err := dev.NewAffineTensor(w, "fused multiply-add probe")
	if err != nil {
		return false, err
	}
	defer table.Release()
	ids, err := dev.NewTensor(gpu.F32, "fused multiply-add probe id", 1)
	if err != nil {
		return false, err
	}
	defer ids.Release()
	if err := ids.Buf.Write(ids.Offset, gpu.U32Bytes([]uint32{0})); err != nil {
		return false, err
	}
	x, err := dev.NewTensor(gpu.F32, "fused multiply-add probe row", 1, f.Group)
	if err != nil {
		return false, err
	}
	defer x.Release()
	rec := dev.NewRecorder()
	defer rec.Release()
	if err := EmbeddingForward(rec, table, ids, x, 1, f.Group); err != nil {
		return false, err
	}
	if err := rec.Submit(); err != nil {
		return false, err
	}
	row, err := x.Download(context.Background())
	if err != nil {
		return false, fmt.Errorf("probing the embedding kernel's rounding: %w", err)
	}
	switch row[0] {
	case 3 * 0x1p-23:
		return true, nil
	case 0x1p-21:
		return false, nil
	}
	return false, fmt.Errorf("probing the embedding kernel's rounding: (1 + 2^-23) * 3 - 3 gave %g, want %g (fused) or %g", row[0], 3*0x1p-23, 0x1p-21)
}

// DType is the table's storage: F32, BF16 or Quantized.
func (e *Embedding) DType() gpu.DType {
	switch {
	case e.affine != nil:
		return gpu.Quantized
	case e.bf16 != nil:
		return gpu.BF16
	}
	return gpu.F32
}

// Lookup writes the rows of ids into x ([len(ids), Cols]). An id outside the
// vocabulary is an error (the data loader rejects such ids before).
func (e *Embedding) Lookup(ids []uint32, x []float32) error {
	if len(x) != len(ids)*e.Cols {
		return fmt.Errorf("embedding lookup: %d outputs for %d tokens of %d columns", len(x), len(ids), e.Cols)
	}
	for t, id := range ids {
		if uint64(id) >= uint64(e.Vocab) {
			return fmt.Errorf("embedding lookup: token %d has id %d, outside the vocabulary (%d)", t, id, e.Vocab)
		}
		e.row(int(id), x[t*e.Cols:(t+1)*e.Cols])
	}
	return nil
}

// row writes row v of the table into dst ([Cols]).
func (e *Embedding) row(v int, dst []float32) {
	switch {
	case e.affine != nil:
		e.affine.DequantizeRow(v, dst, e.fused)
	case e.bf16 != nil:
		for c, h := range e.bf16[v*e.Cols : (v+1)*e.Cols] {
			dst[c] = gpu.FromBF16(h)
		}
	default:
		copy(dst, e.f32[v*e.Cols:(v+1)*e.Cols])
	}
}

// Dequantized is the table in f32, every row as Lookup gives it: the float
// twin of a quantized table.
func (e *Embedding) Dequantized() *Embedding {
	out := &Embedding{Vocab: e.Vocab, Cols: e.Cols, f32: make([]float32, e.Vocab*e.Cols)}
	for v := range e.Vocab {
		e.row(v, out.f32[v*e.Cols:(v+1)*e.Cols])
	}
	return out
}
