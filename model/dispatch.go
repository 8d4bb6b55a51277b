package model

import (
	"fmt"
	"math"

	"github.com/sparselora/sparselora/gpu"
)

// Dispatch helpers shared by the small per-op kernels of this package
// (rmsnorm.go, rope.go, swiglu.go, embedding.go, bias.go, weight_grads.go,
// linear_decode.go): checking operand tensors and binding them together,
// checking that sizes fit the kernels' u32 indices, and recording a kernel
// over a 2-D grid of workgroups.

// activationWorkgroupSize is the WORKGROUP_SIZE of the kernels that
// dispatchActivationKernel records; the row reductions need a power of two.
const activationWorkgroupSize = 256

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
	// quantized frozen operands may also be affine-quantized weights.
	quantized bool
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

// weightOperand is a frozen operand that may also be affine-quantized (for
// kernels that read codes).
func weightOperand(name string, t *gpu.Tensor, elements int) kernelOperand {
	return kernelOperand{name: name, tensor: t, elements: elements, frozen: true, quantized: true}
}

// affineRowLayout is a quantized weight's row length in words and the word
// of a row's first scale (zeros for other weights).
func affineRowLayout(w *gpu.Tensor, in int) (rowWords, scaleOff uint32) {
	if w.DType != gpu.Quantized {
		return 0, 0
	}
	return uint32(w.Affine.RowWords(in)), uint32(w.Affine.CodeWords(in))
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
	case o.quantized && t.DType == gpu.Quantized:
		if t.Affine == nil || len(t.Shape) != 2 {
			return fmt.Errorf("%s: quantized %s of shape %v has no format or is not [rows, cols]", op, o.name, t.Shape)
		}
		if err := t.Affine.Check(t.Shape[1]); err != nil {
			return fmt.Errorf("%s: %s: %w", op, o.name, err)
		}
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

// activationGroups is the number of workgroups that give each of n elements an
// invocation.
func activationGroups(n int) uint64 {
	return (uint64(n) + activationWorkgroupSize - 1) / activationWorkgroupSize
}

// dispatchActivationKernel records kernel, of the given kind, over at least groups workgroups, laid
// out as a 2-D grid within gridLimit (0: the device's
// maxComputeWorkgroupsPerDimension) workgroups per dimension. indicesPerGroup is
// how many u32 work indices each workgroup takes (WORKGROUP_SIZE for the
// elementwise kernels, 1 for the row kernels): the rounded-up grid must not run
// past 2^32 of them.
func dispatchActivationKernel(op string, kind gpu.Kind, rec *gpu.Recorder, dev *gpu.Device, kernel *gpu.Kernel, params []byte, views []gpu.Binding,
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
	if err := rec.Dispatch(kind, kernel, params, views, gx, gy, 1); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}
