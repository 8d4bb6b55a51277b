package model

import (
	"fmt"

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
