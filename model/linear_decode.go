package model

import (
	"fmt"
	"math"

	"github.com/sparselora/sparselora/gpu"
)

// Projections of a few rows (generation's new token) as matrix-vector
// products: shaders/linear_decode.wgsl reads each weight once for all rows,
// where the GEMM's smallest tile computes 32 rows whatever M is.

const (
	linearDecodeShader = "linear_decode.wgsl"
	// linearDecodeWorkgroup invocations split each dot product (a power of
	// two; 32 is a warp on most GPUs) and each workgroup computes
	// linearDecodeOutputs outputs, so each x value loaded serves that many
	// weights. Of workgroups of 16 to 256 invocations and 1 to 16 outputs, 32 x 8
	// was within 20% of the fastest on lavapipe, and 1 x 1408 x 512 ran 25 times
	// faster than through the GEMM.
	linearDecodeWorkgroup = 32
	linearDecodeOutputs   = 8
	// linearDecodeMaxRows is the most rows the kernel takes: it compiles per
	// row count and keeps outputs x rows sums per invocation, so it serves
	// decoding; prompt chunks go through the GEMM.
	linearDecodeMaxRows = 4
)

// forwardFewRows is Forward for rows <= linearDecodeMaxRows through the
// matrix-vector kernel: y = x W^T (+ b), or y += that when accumulate is set.
func (l *Linear) forwardFewRows(rec *gpu.Recorder, x, y *gpu.Tensor, rows int, accumulate bool) error {
	if rows == 0 {
		return nil
	}
	for r0 := 0; r0 < l.Out; r0 += l.BlockRows {
		n := min(l.BlockRows, l.Out-r0)
		if err := matVec(rec, x, l.rowBlock(r0, n), columns(y, rows, l.Out, r0, n), rows, n, l.In, l.Out, beta(accumulate)); err != nil {
			return fmt.Errorf("linear [%d, %d] forward: %w", l.Out, l.In, err)
		}
	}
	if l.Bias != nil {
		return AddBias(rec, y, l.Bias, rows, l.Out)
	}
	return nil
}

// matVec records y = x w^T + beta*y for rows rows (at most
// linearDecodeMaxRows): x [rows, in] f32, w [outs, in] f32, bf16 or quantized, y rows of
// outs values ldy apart.
func matVec(rec *gpu.Recorder, x, w, y *gpu.Tensor, rows, outs, in, ldy int, beta float32) error {
	const op = "matrix-vector product"
	dev, err := recorderDevice(op, rec)
	if err != nil {
		return err
	}
	if rows < 1 || rows > linearDecodeMaxRows || outs < 1 || in < 1 || ldy < outs {
		return fmt.Errorf("%s: %d rows (1..%d), %d outputs, %d inputs, row stride %d", op, rows, linearDecodeMaxRows, outs, in, ldy)
	}
	if err := checkU32Elements(op, outs, in); err != nil {
		return err
	}
	views, bases, err := bindActivationOperands(op, dev,
		activationOperand("x", x, rows*in), weightOperand("w", w, outs*in), activationOperand("y", y, (rows-1)*ldy+outs))
	if err != nil {
		return err
	}
	kernel, err := dev.Kernel(linearDecodeShader, append([]gpu.Const{gpu.U32("WORKGROUP_SIZE", linearDecodeWorkgroup),
		gpu.U32("OUTS", linearDecodeOutputs), gpu.U32("ROWS", rows), gpu.Bool("W_BF16", w.DType == gpu.BF16)},
		gpu.AffineConsts(w)...)...)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	rowWords, scaleOff := affineRowLayout(w, in)
	groups := uint64((outs + linearDecodeOutputs - 1) / linearDecodeOutputs)
	gx, gy, err := gpu.SplitGrid(groups, dev.Limits.MaxComputeWorkgroupsPerDimension)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	params := gpu.PackParams(uint32(rows), uint32(outs), uint32(in), uint32(ldy), bases[0], bases[1], bases[2], gx,
		math.Float32bits(1), math.Float32bits(beta), rowWords, scaleOff)
	if err := rec.Dispatch(gpu.KindLinearDecode, kernel, params, views, gx, gy, 1); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}
