package model

import (
	"fmt"

	"github.com/sparselora/sparselora/gpu"
)

const biasShader = "bias.wgsl"

// AddBias records y[r, c] += b[c] in place on the row-major f32 [rows, cols] y:
// the q/k/v projection biases of Qwen2. b is the frozen [cols] bias, f32 or bf16.
func AddBias(rec *gpu.Recorder, y, b *gpu.Tensor, rows, cols int) error {
	return addBias(rec, y, b, rows, cols, 0)
}

// addBias is AddBias with the per-dimension workgroup limit as an argument (0:
// the device's), so tests reach 2-D grids with small arrays.
func addBias(rec *gpu.Recorder, y, b *gpu.Tensor, rows, cols int, gridLimit uint32) error {
	const op = "AddBias"
	if rows < 0 || cols < 1 {
		return fmt.Errorf("%s: shape %d x %d, want rows >= 0 and cols >= 1", op, rows, cols)
	}
	if err := checkU32Elements(op, rows, cols); err != nil {
		return err
	}
	dev, err := recorderDevice(op, rec)
	if err != nil {
		return err
	}
	views, bases, err := bindActivationOperands(op, dev, activationOperand("y", y, rows*cols), frozenOperand("b", b, cols))
	if err != nil || rows == 0 {
		return err
	}
	kernel, err := dev.Kernel(biasShader,
		gpu.U32("WORKGROUP_SIZE", activationWorkgroupSize), gpu.Bool("B_BF16", b.DType == gpu.BF16))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	n := rows * cols
	params := gpu.PackParams(uint32(n), uint32(cols), bases[0], bases[1])
	return dispatchActivationKernel(op, gpu.KindElementwise, rec, dev, kernel, params, views, activationGroups(n), activationWorkgroupSize, gridLimit)
}
