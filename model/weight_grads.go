package model

import (
	"fmt"

	"github.com/sparselora/sparselora/gpu"
)

// The weight gradients full-parameter training needs besides the
// projections' GEMMs (shaders/weight_grads.wgsl): RMSNorm weights, biases and
// the embedding table. Each accumulates into its gradient, as gradients
// accumulate over micro-batches until they are zeroed.

const (
	weightGradsShader = "weight_grads.wgsl"
	opColumnSum       = 0
	opEmbeddingGrad   = 1
)

// RMSNormWeightGrad records dw[c] += sum_r dy[r,c] * x[r,c] * rstd[r]: the
// gradient of RMSNorm's weight, from the forward input x [rows, cols], the
// rstd [rows] it saved and the output gradient dy [rows, cols].
func RMSNormWeightGrad(rec *gpu.Recorder, dw, dy, x, rstd *gpu.Tensor, rows, cols int) error {
	return weightGrad(rec, "RMSNormWeightGrad", opColumnSum, true, rows, cols, 0,
		activationOperand("dw", dw, cols), activationOperand("dy", dy, rows*cols),
		frozenOperand("x", x, rows*cols), frozenOperand("rstd", rstd, rows))
}

// BiasGrad records db[c] += sum_r dy[r,c] over the rows of dy [rows, cols].
func BiasGrad(rec *gpu.Recorder, db, dy *gpu.Tensor, rows, cols int) error {
	return weightGrad(rec, "BiasGrad", opColumnSum, false, rows, cols, 0,
		activationOperand("db", db, cols), activationOperand("dy", dy, rows*cols))
}

// EmbeddingBackward records dTable[ids[t], :] += dx[t, :] for the tokens t <
// tokens whose mask is non-zero: the gradient of EmbeddingForward. ids and
// mask are u32 bits in f32-typed tensors, as the workspace keeps them; dTable
// is f32 [vocab, cols].
func EmbeddingBackward(rec *gpu.Recorder, dTable, dx, ids, mask *gpu.Tensor, tokens, cols int) error {
	if dTable == nil || len(dTable.Shape) != 2 || dTable.Shape[1] != cols {
		return fmt.Errorf("EmbeddingBackward: dTable must be [vocab, %d]", cols)
	}
	vocab := dTable.Shape[0]
	return weightGrad(rec, "EmbeddingBackward", opEmbeddingGrad, false, tokens, cols, vocab,
		activationOperand("dTable", dTable, vocab*cols), activationOperand("dx", dx, tokens*cols),
		frozenOperand("ids", ids, tokens), frozenOperand("mask", mask, tokens))
}

func weightGrad(rec *gpu.Recorder, op string, kind int, scaled bool, rows, cols, vocab int, operands ...kernelOperand) error {
	if rows < 0 || cols < 1 {
		return fmt.Errorf("%s: %d rows of %d columns, want rows >= 0 and cols >= 1", op, rows, cols)
	}
	if err := checkU32Elements(op, max(rows, vocab), cols); err != nil {
		return err
	}
	dev, err := recorderDevice(op, rec)
	if err != nil {
		return err
	}
	views, bases, err := bindActivationOperands(op, dev, operands...)
	if err != nil || rows == 0 {
		return err
	}
	if len(views) < 4 {
		unused, err := dev.Placeholder()
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		for len(views) < 4 {
			views, bases = append(views, gpu.Bind(unused)), append(bases, 0)
		}
	}
	n := operands[0].elements
	kernel, err := dev.Kernel(weightGradsShader, gpu.U32("WORKGROUP_SIZE", activationWorkgroupSize),
		gpu.U32("OP", kind), gpu.Bool("SCALED", scaled))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	params := gpu.PackParams(uint32(n), uint32(rows), uint32(cols), bases[0], bases[1], bases[2], bases[3], uint32(vocab), 0, 0, 0, 0)
	return dispatchActivationKernel(op, gpu.KindReduction, rec, dev, kernel, params, views, activationGroups(n), activationWorkgroupSize, 0)
}
