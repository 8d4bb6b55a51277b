package model

import (
	"fmt"

	"github.com/sparselora/sparselora/gpu"
)

const (
	swiGLUShader         = "swiglu.wgsl"
	swiGLUBackwardShader = "swiglu_backward.wgsl"
)

// SwiGLUForward records h = silu(g) * u elementwise over n values (the LLaMA
// MLP's gated activation; silu(z) = z * sigmoid(z)). g, u and h are f32 tensors
// of n elements; they may share one buffer if they do not overlap.
func SwiGLUForward(rec *gpu.Recorder, g, u, h *gpu.Tensor, n int) error {
	return swiGLUForward(rec, g, u, h, n, 0)
}

// SwiGLUBackward records the gradients of SwiGLUForward given dh, in place:
//
//	g <- dg = dh * u * silu'(g),  silu'(z) = s (1 + z (1 - s)), s = sigmoid(z)
//	u <- du = dh * silu(g)
//
// The MLP's backward reads g and u only here, so their gradients take their
// place instead of needing two more [tokens, intermediate] buffers.
func SwiGLUBackward(rec *gpu.Recorder, g, u, dh *gpu.Tensor, n int) error {
	return swiGLUBackward(rec, g, u, dh, n, 0)
}

// swiGLUForward is SwiGLUForward with the per-dimension workgroup limit as an
// argument (0: the device's), so tests reach 2-D grids with small arrays.
func swiGLUForward(rec *gpu.Recorder, g, u, h *gpu.Tensor, n int, gridLimit uint32) error {
	const op = "SwiGLUForward"
	if err := checkU32Elements(op, n); err != nil {
		return err
	}
	dev, err := recorderDevice(op, rec)
	if err != nil {
		return err
	}
	views, bases, err := bindActivationOperands(op, dev,
		activationOperand("g", g, n), activationOperand("u", u, n), activationOperand("h", h, n))
	if err != nil || n == 0 {
		return err
	}
	kernel, err := dev.Kernel(swiGLUShader, gpu.U32("WORKGROUP_SIZE", activationWorkgroupSize))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	params := gpu.PackParams(uint32(n), bases[0], bases[1], bases[2])
	return dispatchActivationKernel(op, gpu.KindElementwise, rec, dev, kernel, params, views, activationGroups(n), activationWorkgroupSize, gridLimit)
}

func swiGLUBackward(rec *gpu.Recorder, g, u, dh *gpu.Tensor, n int, gridLimit uint32) error {
	const op = "SwiGLUBackward"
	if err := checkU32Elements(op, n); err != nil {
		return err
	}
	dev, err := recorderDevice(op, rec)
	if err != nil {
		return err
	}
	views, bases, err := bindActivationOperands(op, dev,
		activationOperand("g", g, n), activationOperand("u", u, n), activationOperand("dh", dh, n))
	if err != nil || n == 0 {
		return err
	}
	kernel, err := dev.Kernel(swiGLUBackwardShader, gpu.U32("WORKGROUP_SIZE", activationWorkgroupSize))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	params := gpu.PackParams(uint32(n), bases[0], bases[1], bases[2])
	return dispatchActivationKernel(op, gpu.KindElementwise, rec, dev, kernel, params, views, activationGroups(n), activationWorkgroupSize, gridLimit)
}
