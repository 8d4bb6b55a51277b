package model

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/sparselora/sparselora/gpu"
)

// RMSNorm (shaders/rmsnorm.wgsl, shaders/rmsnorm_backward.wgsl) with a frozen
// f32 or bf16 weight. The end of this file holds the helpers that the activation
// kernels of rmsnorm.go, rope.go, swiglu.go, embedding.go and bias.go share.

const (
	rmsNormShader         = "rmsnorm.wgsl"
	rmsNormBackwardShader = "rmsnorm_backward.wgsl"
	// activationWorkgroupSize is the WORKGROUP_SIZE of every kernel in these
	// files; the row reductions need a power of two.
	activationWorkgroupSize = 256
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
	params := packKernelParams(uint32(rows), uint32(cols), bases[0], bases[1], bases[2], bases[3], math.Float32bits(eps))
	return dispatchActivationKernel(op, rec, dev, kernel, params, views, uint64(rows), 1, gridLimit)
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
	params := packKernelParams(uint32(rows), uint32(cols), bases[0], bases[1], bases[2], bases[3], bases[4])
	return dispatchActivationKernel(op, rec, dev, kernel, params, views, uint64(rows), 1, gridLimit)
}

// checkNormShape checks a [rows, cols] shape whose rows are normalised: a row
// needs at least one column, and element indices must fit the kernels' u32.
func checkNormShape(op string, rows, cols int) error {
	if rows < 0 || cols < 1 {
		return fmt.Errorf("%s: shape %d x %d, want rows >= 0 and cols >= 1", op, rows, cols)
	}
	return checkU32Elements(op, rows, cols)
}

// checkU32Elements checks that a product of non-negative sizes fits a u32
// element index.
func checkU32Elements(op string, sizes ...int) error {
	n := uint64(1)
	for _, s := range sizes {
		if s < 0 {
			return fmt.Errorf("%s: negative size in %v", op, sizes)
		}
		n *= uint64(s)
		if n > math.MaxUint32 {
			return fmt.Errorf("%s: sizes %v make more than 2^32-1 elements, beyond the kernels' u32 indices", op, sizes)
		}
	}
	return nil
}

// recorderDevice is the device whose kernels rec records.
func recorderDevice(op string, rec *gpu.Recorder) (*gpu.Device, error) {
	if rec == nil {
		return nil, fmt.Errorf("%s: nil recorder", op)
	}
	dev := rec.Device()
	if dev == nil {
		return nil, fmt.Errorf("%s: recorder has no device", op)
	}
	return dev, nil
}

// kernelOperand is one tensor argument of an activation kernel.
type kernelOperand struct {
	name     string
	tensor   *gpu.Tensor
	elements int
	// frozen operands (weights, tables) may be f32 or bf16 and are bound
	// read-only; the others are f32 activations bound read_write.
	frozen bool
}

// activationOperand is an f32 operand of exactly elements values, bound read_write
// (also when only read) so that activations may share a buffer.
func activationOperand(name string, t *gpu.Tensor, elements int) kernelOperand {
	return kernelOperand{name: name, tensor: t, elements: elements}
}

// frozenOperand is a frozen f32 or bf16 operand of exactly elements values, bound
// read-only.
func frozenOperand(name string, t *gpu.Tensor, elements int) kernelOperand {
	return kernelOperand{name: name, tensor: t, elements: elements, frozen: true}
}

// bindActivationOperands validates the operands and returns their bindings (Tensor.View)
// and base element indices, in order. Operands in one buffer must be bindable
// together: WebGPU forbids a buffer being bound both read-only (frozen) and
// writable (activation) in one dispatch, and writable bindings must not overlap,
// counting the stretch below each tensor back to the storage-offset alignment.
func bindActivationOperands(op string, dev *gpu.Device, operands ...kernelOperand) ([]gpu.Binding, []uint32, error) {
	views := make([]gpu.Binding, len(operands))
	bases := make([]uint32, len(operands))
	for i, o := range operands {
		if err := checkKernelOperand(op, o); err != nil {
			return nil, nil, err
		}
		views[i], bases[i] = o.tensor.View()
		if end := uint64(bases[i]) + uint64(o.elements); end > math.MaxUint32 {
			return nil, nil, fmt.Errorf("%s: %s ends at element %d of its binding, beyond u32 indices", op, o.name, end)
		}
		if limit := dev.Limits.MaxStorageBufferBindingSize; views[i].Size > limit {
			return nil, nil, fmt.Errorf("%s: %s needs a %d-byte binding, over the adapter's maxStorageBufferBindingSize %d",
				op, o.name, views[i].Size, limit)
		}
	}
	for i, a := range operands {
		for j := i + 1; j < len(operands); j++ {
			b := operands[j]
			if a.tensor.Buf != b.tensor.Buf || a.frozen && b.frozen {
				continue
			}
			if a.frozen != b.frozen {
				frozen, written := a, b
				if b.frozen {
					frozen, written = b, a
				}
				return nil, nil, fmt.Errorf("%s: %s shares a buffer with %s: a buffer cannot be bound read-only (%s) and writable (%s) in one dispatch",
					op, frozen.name, written.name, frozen.name, written.name)
			}
			va, vb := views[i], views[j]
			if va.Offset < vb.Offset+vb.Size && vb.Offset < va.Offset+va.Size {
				return nil, nil, fmt.Errorf("%s: %s (bytes %d..%d) and %s (bytes %d..%d) share a buffer and their bindings overlap "+
					"(bindings start at multiples of %d bytes); writable bindings must not alias, so use separate or aligned tensors",
					op, a.name, a.tensor.Offset, a.tensor.Offset+a.tensor.Bytes(), b.name, b.tensor.Offset, b.tensor.Offset+b.tensor.Bytes(),
					dev.Limits.MinStorageBufferOffsetAlignment)
			}
		}
	}
	return views, bases, nil
}

// checkKernelOperand checks that an operand is a tensor of the right dtype and size
// lying inside its buffer at a 4-byte offset.
func checkKernelOperand(op string, o kernelOperand) error {
	t := o.tensor
	switch {
	case t == nil:
		return fmt.Errorf("%s: %s is nil", op, o.name)
	case t.Buf == nil:
		return fmt.Errorf("%s: %s has no buffer", op, o.name)
	case !o.frozen && t.DType != gpu.F32:
		return fmt.Errorf("%s: %s is %s, want f32", op, o.name, t.DType)
	case o.frozen && t.DType != gpu.F32 && t.DType != gpu.BF16:
		return fmt.Errorf("%s: %s is %s, want f32 or bf16", op, o.name, t.DType)
	case t.Offset%4 != 0:
		return fmt.Errorf("%s: %s offset %d is not a multiple of 4 bytes", op, o.name, t.Offset)
	}
	for _, s := range t.Shape {
		if s < 0 {
			return fmt.Errorf("%s: %s has a negative dimension in shape %v", op, o.name, t.Shape)
		}
	}
	if t.Len() != o.elements {
		return fmt.Errorf("%s: %s has shape %v (%d elements), want %d elements", op, o.name, t.Shape, t.Len(), o.elements)
	}
	if end := t.Offset + t.Bytes(); end > t.Buf.Size() {
		return fmt.Errorf("%s: %s (shape %v at byte %d) overruns its %d-byte buffer", op, o.name, t.Shape, t.Offset, t.Buf.Size())
	}
	return nil
}

// packKernelParams lays out u32 words (f32 values as their bits) as a kernel's
// uniform Params struct, padded to a multiple of 16 bytes.
func packKernelParams(words ...uint32) []byte {
	b := make([]byte, (4*len(words)+15)/16*16)
	for i, w := range words {
		binary.LittleEndian.PutUint32(b[4*i:], w)
	}
	return b
}

// activationGroups is the number of workgroups that give each of n elements an
// invocation.
func activationGroups(n int) uint64 {
	return (uint64(n) + activationWorkgroupSize - 1) / activationWorkgroupSize
}

// dispatchActivationKernel records kernel over at least groups workgroups, laid
// out as a 2-D grid within gridLimit (0: the device's
// maxComputeWorkgroupsPerDimension) workgroups per dimension. indicesPerGroup is
// how many u32 work indices each workgroup takes (WORKGROUP_SIZE for the
// elementwise kernels, 1 for the row kernels): the rounded-up grid must not run
// past 2^32 of them.
func dispatchActivationKernel(op string, rec *gpu.Recorder, dev *gpu.Device, kernel *gpu.Kernel, params []byte, views []gpu.Binding,
	groups, indicesPerGroup uint64, gridLimit uint32) error {
	limit := dev.Limits.MaxComputeWorkgroupsPerDimension
	if gridLimit != 0 {
		limit = min(limit, gridLimit)
	}
	gx, gy, err := gpu.SplitGrid(groups, limit)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if uint64(gx)*uint64(gy)*indicesPerGroup > math.MaxUint32+1 {
		return fmt.Errorf("%s: a %d x %d grid of workgroups taking %d indices each runs past u32 indices", op, gx, gy, indicesPerGroup)
	}
	if err := rec.Dispatch(kernel, params, views, gx, gy, 1); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}
