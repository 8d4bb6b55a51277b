package model

import (
	"fmt"

	"github.com/sparselora/sparselora/gpu"
)

// Linear is a frozen projection y = x W^T (+ b) with W [Out, In] on the GPU as
// f32, bf16 or affine-quantized codes (gpu.Quantized, which the kernels
// dequantize as they load them). A weight larger than the adapter's maxStorageBufferBindingSize
// (128 MiB on lavapipe) stays in one buffer but is multiplied in blocks of rows,
// each bound on its own.
type Linear struct {
	Out, In int
	W       *gpu.Tensor
	Bias    *gpu.Tensor // [Out], or nil
	// BlockRows is the number of rows of W bound at once.
	BlockRows int
}

// NewLinear wraps a weight tensor of shape [out, in].
func NewLinear(dev *gpu.Device, w, bias *gpu.Tensor) (*Linear, error) {
	if len(w.Shape) != 2 {
		return nil, fmt.Errorf("linear weight has shape %v, want [out, in]", w.Shape)
	}
	l := &Linear{Out: w.Shape[0], In: w.Shape[1], W: w, Bias: bias}
	if bias != nil && bias.Len() != l.Out {
		return nil, fmt.Errorf("linear bias has %d elements, want %d", bias.Len(), l.Out)
	}
	rowBytes := w.DType.Bytes(l.In)
	if w.DType == gpu.Quantized {
		if w.Affine == nil {
			return nil, fmt.Errorf("quantized linear weight [%d, %d] has no format", l.Out, l.In)
		}
		if err := w.Affine.Check(l.In); err != nil {
			return nil, fmt.Errorf("linear weight [%d, %d]: %w", l.Out, l.In, err)
		}
		rowBytes = weightRowBytes(w, l.In)
	}
	limit := dev.Limits.MaxStorageBufferBindingSize - uint64(dev.Limits.MinStorageBufferOffsetAlignment)
	l.BlockRows = int(min(uint64(l.Out), limit/rowBytes))
	if w.DType == gpu.BF16 && l.BlockRows < l.Out {
		l.BlockRows &^= 1 // blocks must start on a whole u32 of packed bf16
	}
	if l.BlockRows < 1 {
		return nil, fmt.Errorf("one row of a [%d, %d] weight exceeds the binding limit", l.Out, l.In)
	}
	return l, nil
}

// rowBlock is a view of rows [r0, r0+n) of W.
func (l *Linear) rowBlock(r0, n int) *gpu.Tensor {
	return weightRows(l.W, r0, n, l.In)
}

// columns is a view of columns [c0, c0+n) of a row-major [rows, width] tensor,
// used with leading dimension width.
func columns(t *gpu.Tensor, rows, width, c0, n int) *gpu.Tensor {
	return &gpu.Tensor{Buf: t.Buf, Offset: t.Offset + uint64(4*c0), Shape: []int{(rows-1)*width + n}, DType: gpu.F32}
}

// Forward records y = x W^T (+ b) for the first tokens rows; y is overwritten,
// or added to when accumulate is set (how projections write into the residual
// stream).
func (l *Linear) Forward(rec *gpu.Recorder, x, y *gpu.Tensor, tokens int, accumulate bool) error {
	if tokens == 0 {
		return nil
	}
	if err := l.ForwardKeepOutputs(rec, x, y, RowSet{Count: tokens}, nil, accumulate); err != nil {
		return err
	}
	if l.Bias != nil {
		return AddBias(rec, y, l.Bias, tokens, l.Out)
	}
	return nil
}

// BackwardInput records dx = dy W (accumulate: dx += dy W) for the first tokens
// rows. The weight is frozen, so there is no weight gradient.
func (l *Linear) BackwardInput(rec *gpu.Recorder, dy, dx *gpu.Tensor, tokens int, accumulate bool) error {
	if tokens == 0 {
		return nil
	}
	return l.BackwardKeptOutputs(rec, dy, dx, RowSet{Count: tokens}, nil, accumulate)
}

// beta is the GEMM coefficient of the old output: 1 to add, 0 to overwrite.
func beta(accumulate bool) float32 {
	if accumulate {
		return 1
	}
	return 0
}
