package model

import (
	"fmt"
	"math"

	"github.com/sparselora/sparselora/gpu"
)

// RMSNorm (shaders/rmsnorm.wgsl, shaders/rmsnorm_backward.wgsl) with a frozen
// f32 or bf16 weight.

const (
	rmsNormShader         = "rmsnorm.wgsl"
	rmsNormBackwardShader = "rmsnorm_backward.wgsl"
)

// RMSNormForward records y = x * rstd * w per row of the row-major [rows, cols]
// x, with rstd[r] = 1/sqrt(mean_c x[r,c]^2 + eps) written to rstd ([rows]) for
// RMSNormBackward. x, y are f32 [rows, cols]; w is the frozen [cols] weight, f32
// or bf16. All activation tensors may share one buffer if they do not overlap.
func RMSNormForward(rec *gpu.Recorder, x, w, y, rstd *gpu.Tensor, rows, cols int, eps float32) error {
	return rmsNormForward(rec, x, w, y, rstd, rows, cols, eps, 0)
}

// RMSNormBackward records the input gradient of RMSNormForward given the output
// gradient dy, using the rstd that the forward pass saved:
//
//	dx = rstd * (w*dy - x * rstd^2 * mean(w*dy*x))   (per row)
//
// The weight is frozen, so there is no weight gradient. dx is overwritten (it
// may hold garbage), or added to when accumulate is set, as the residual
// stream's gradient needs.
func RMSNormBackward(rec *gpu.Recorder, x, w, rstd, dy, dx *gpu.Tensor, rows, cols int, accumulate bool) error {
	return rmsNormBackward(rec, x, w, rstd, dy, dx, rows, cols, accumulate, 0)
}

// rmsNormForward is RMSNormForward with the grid's per-dimension workgroup
// limit as an argument (0: the device's), so tests reach 2-D grids with few rows.
func rmsNormForward(rec *gpu.Recorder, x, w, y, rstd *gpu.Tensor, rows, cols int, eps float32, gridLimit uint32) error {
	const op = "RMSNormForward"
	if err := checkNormShape(op, rows, cols); err != nil {
		return err
	}
	if !(eps >= 0) || math.IsInf(float64(eps), 0) {
		return fmt.Errorf("%s: eps %g is not a finite non-negative number", op, eps)
	}
	dev, err := recorderDevice(op, rec)
	if err != nil {
		return err
	}
	views, bases, err := bindActivationOperands(op, dev,
		activationOperand("x", x, rows*cols), frozenOperand("w", w, cols),
		activationOperand("y", y, rows*cols), activationOperand("rstd", rstd, rows))
	if err != nil || rows == 0 {
		return err
	}
	kernel, err := dev.Kernel(rmsNormShader,
		gpu.U32("WORKGROUP_SIZE", activationWorkgroupSize), gpu.Bool("W_BF16", w.DType == gpu.BF16))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	params := gpu.PackParams(uint32(rows), uint32(cols), bases[0], bases[1], bases[2], bases[3], math.Float32bits(eps))
	return dispatchActivationKernel(op, gpu.KindNorm, rec, dev, kernel, params, views, uint64(rows), 1, gridLimit)
}

func rmsNormBackward(rec *gpu.Recorder, x, w, rstd, dy, dx *gpu.Tensor, rows, cols int, accumulate bool, gridLimit uint32) error {
	const op = "RMSNormBackward"
	if err := checkNormShape(op, rows, cols); err != nil {
		return err
	}
	dev, err := recorderDevice(op, rec)
	if err != nil {
		return err
	}
	views, bases, err := bindActivationOperands(op, dev,
		activationOperand("x", x, rows*cols), frozenOperand("w", w, cols), activationOperand("rstd", rstd, rows),
		activationOperand("dy", dy, rows*cols), activationOperand("dx", dx, rows*cols))
	if err != nil || rows == 0 {
		return err
	}
	kernel, err := dev.Kernel(rmsNormBackwardShader,
		gpu.U32("WORKGROUP_SIZE", activationWorkgroupSize), gpu.Bool("W_BF16", w.DType == gpu.BF16),
		gpu.Bool("ACCUMULATE", accumulate))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	params := gpu.PackParams(uint32(rows), uint32(cols), bases[0], bases[1], bases[2], bases[3], bases[4])
	return dispatchActivationKernel(op, gpu.KindNorm, rec, dev, kernel, params, views, uint64(rows), 1, gridLimit)
}

// checkNormShape checks a [rows, cols] shape whose rows are normalised: a row
// needs at least one column, and element indices must fit the kernels' u32.
func checkNormShape(op string, rows, cols int) error {
	if rows < 0 || cols < 1 {
		return fmt.Errorf("%s: shape %d x %d, want rows >= 0 and cols >= 1", op, rows, cols)
	}
	return checkU32Elements(op, rows, cols)
}
