package gpu

import (
	"errors"
	"fmt"
	"math"
)

// The kernels of shaders/elementwise.wgsl: Axpby, Scale, RowSum and RowSumSquares
// on f32 tensor views. Each records one dispatch (RowSum of zero columns records a
// clear) on the caller's Recorder, so a step batches them into one submission.

const (
	elementwiseShader = "elementwise.wgsl"
	// elementwiseWorkgroupSize is injected as WORKGROUP_SIZE; the tree reduction
	// needs a power of two.
	elementwiseWorkgroupSize = 256
)

// elementwiseOp values are the OP_* consts of elementwise.wgsl.
type elementwiseOp int

const (
	opAxpby elementwiseOp = iota
	opScale
	opRowSum
	opRowSumSquares
)

func (op elementwiseOp) String() string {
	return [...]string{"Axpby", "Scale", "RowSum", "RowSumSquares"}[op]
}

// elementwiseParams mirrors struct Params of elementwise.wgsl.
type elementwiseParams struct {
	n, rows          uint32
	dstBase, srcBase uint32
	alpha, beta      float32
}

func (p elementwiseParams) bytes() []byte {
	return PackParams(p.n, p.rows, p.dstBase, p.srcBase, math.Float32bits(p.alpha), math.Float32bits(p.beta))
}

// Axpby records y = alpha*x + beta*y elementwise (alpha = beta = 1 adds x to y).
// x and y must be f32 with the same number of elements. As in BLAS, a zero beta
// means y is not read, so y may hold garbage or NaN, and a zero alpha means x is
// not read. x and y may be views of one buffer if they do not overlap or are the
// same view.
func Axpby(rec *Recorder, y, x *Tensor, alpha, beta float32) error {
	return axpby(rec, y, x, alpha, beta, gridLimit(rec))
}

// Scale records y = alpha*y in place (0*NaN is still NaN; use Axpby with
// alpha = beta = 0 to zero a tensor).
func Scale(rec *Recorder, y *Tensor, alpha float32) error {
	return scale(rec, y, alpha, gridLimit(rec))
}

// RowSum records out[r] = sum over c of x[r*cols+c] for a row-major rows x cols x.
// out must have rows elements and must not overlap x.
func RowSum(rec *Recorder, out, x *Tensor, rows, cols int) error {
	return rowReduce(rec, opRowSum, out, x, rows, cols, gridLimit(rec))
}

// RowSumSquares records out[r] = sum over c of x[r*cols+c]^2 (squared row norms).
func RowSumSquares(rec *Recorder, out, x *Tensor, rows, cols int) error {
	return rowReduce(rec, opRowSumSquares, out, x, rows, cols, gridLimit(rec))
}

// gridLimit is the most workgroups a dispatch may have per dimension; the
// unexported variants take it as an argument so tests can force 2-D grids
// without allocating 65535*256 elements.
func gridLimit(rec *Recorder) uint32 {
	if rec == nil || rec.dev == nil {
		return 0 // checkRecorder reports it
	}
	return rec.dev.Limits.MaxComputeWorkgroupsPerDimension
}

func axpby(rec *Recorder, y, x *Tensor, alpha, beta float32, limit uint32) error {
	op := opAxpby
	if err := checkRecorder(op, rec); err != nil {
		return err
	}
	if err := checkF32(op, rec, "y", y); err != nil {
		return err
	}
	if err := checkF32(op, rec, "x", x); err != nil {
		return err
	}
	n := y.Len()
	if x.Len() != n {
		return fmt.Errorf("gpu.%s: x has %d elements (shape %v) but y has %d (shape %v)", op, x.Len(), x.Shape, n, y.Shape)
	}
	if n == 0 {
		return nil
	}
	// Each invocation reads x[i] and y[i] before writing y[i], so a view that is
	// exactly y is safe; any other overlap would read elements other
	// invocations write.
	if overlap(y, x) && y.Offset != x.Offset {
		return fmt.Errorf("gpu.%s: x (bytes %d..%d) partly overlaps y (bytes %d..%d) in the same buffer",
			op, x.Offset, x.Offset+x.Bytes(), y.Offset, y.Offset+y.Bytes())
	}
	params := elementwiseParams{n: uint32(n), alpha: alpha, beta: beta}
	return dispatchElementwise(rec, op, params, y, x, groupsFor(n), limit)
}

func scale(rec *Recorder, y *Tensor, alpha float32, limit uint32) error {
	op := opScale
	if err := checkRecorder(op, rec); err != nil {
		return err
	}
	if err := checkF32(op, rec, "y", y); err != nil {
		return err
	}
	n := y.Len()
	if n == 0 {
		return nil
	}
	params := elementwiseParams{n: uint32(n), alpha: alpha}
	return dispatchElementwise(rec, op, params, y, nil, groupsFor(n), limit)
}

func rowReduce(rec *Recorder, op elementwiseOp, out, x *Tensor, rows, cols int, limit uint32) error {
	if err := checkRecorder(op, rec); err != nil {
		return err
	}
	if err := checkF32(op, rec, "out", out); err != nil {
		return err
	}
	if err := checkF32(op, rec, "x", x); err != nil {
		return err
	}
	if rows < 0 || cols < 0 {
		return fmt.Errorf("gpu.%s: negative shape %d x %d", op, rows, cols)
	}
	if cols > 0 && rows > math.MaxInt/cols {
		return fmt.Errorf("gpu.%s: %d x %d elements overflow", op, rows, cols)
	}
	if x.Len() != rows*cols {
		return fmt.Errorf("gpu.%s: x has %d elements (shape %v), want rows*cols = %d*%d = %d", op, x.Len(), x.Shape, rows, cols, rows*cols)
	}
	if out.Len() != rows {
		return fmt.Errorf("gpu.%s: out has %d elements (shape %v), want one per row (%d)", op, out.Len(), out.Shape, rows)
	}
	if overlap(out, x) {
		return fmt.Errorf("gpu.%s: out (bytes %d..%d) overlaps x (bytes %d..%d) in the same buffer",
			op, out.Offset, out.Offset+out.Bytes(), x.Offset, x.Offset+x.Bytes())
	}
	if rows == 0 {
		return nil
	}
	if cols == 0 {
		// Empty rows sum to zero, and an empty x could not be bound.
		rec.Clear(out.Buf, out.Offset, out.Bytes())
		return nil
	}
	params := elementwiseParams{n: uint32(cols), rows: uint32(rows)}
	return dispatchElementwise(rec, op, params, out, x, uint64(rows), limit)
}

// groupsFor is the number of workgroups that cover n elements.
func groupsFor(n int) uint64 {
	return (uint64(n) + elementwiseWorkgroupSize - 1) / elementwiseWorkgroupSize
}

// dispatchElementwise binds dst (and src, which may be nil when the op does not
// read it) and records the kernel over a grid of at least groups workgroups.
func dispatchElementwise(rec *Recorder, op elementwiseOp, params elementwiseParams, dst, src *Tensor, groups uint64, limit uint32) error {
	gx, gy, err := SplitGrid(groups, limit)
	if err != nil {
		return fmt.Errorf("gpu.%s: %w", op, err)
	}
	align := uint64(max(rec.dev.Limits.MinStorageBufferOffsetAlignment, 4))
	shared := src != nil && src.Buf == dst.Buf
	var dstBinding, srcBinding Binding
	if shared {
		// One binding spans both tensors; the bases locate each inside it.
		start := min(dst.Offset, src.Offset)
		end := max(dst.Offset+dst.Bytes(), src.Offset+src.Bytes())
		dstBinding = alignedBinding(dst.Buf, start, end, align)
		params.dstBase = uint32((dst.Offset - dstBinding.Offset) / 4)
		params.srcBase = uint32((src.Offset - dstBinding.Offset) / 4)
	} else {
		dstBinding = alignedBinding(dst.Buf, dst.Offset, dst.Offset+dst.Bytes(), align)
		params.dstBase = uint32((dst.Offset - dstBinding.Offset) / 4)
		if src != nil {
			srcBinding = alignedBinding(src.Buf, src.Offset, src.Offset+src.Bytes(), align)
			params.srcBase = uint32((src.Offset - srcBinding.Offset) / 4)
		}
	}
	for _, b := range []Binding{dstBinding, srcBinding} {
		if b.Size > rec.dev.Limits.MaxStorageBufferBindingSize {
			return fmt.Errorf("gpu.%s: binding %d bytes exceeds maxStorageBufferBindingSize %d",
				op, b.Size, rec.dev.Limits.MaxStorageBufferBindingSize)
		}
	}

	kernel, err := rec.dev.Kernel(elementwiseShader,
		U32("OP", int(op)), Bool("SHARED", shared), U32("WORKGROUP_SIZE", elementwiseWorkgroupSize))
	if err != nil {
		return fmt.Errorf("gpu.%s: %w", op, err)
	}
	if srcBinding.Buffer == nil {
		// The layout still has binding 2; the device's never-written placeholder
		// fills it without aliasing dst.
		placeholder, err := rec.dev.Placeholder()
		if err != nil {
			return fmt.Errorf("gpu.%s: %w", op, err)
		}
		srcBinding = Bind(placeholder)
	}
	kind := KindElementwise
	if op == opRowSum || op == opRowSumSquares {
		kind = KindReduction
	}
	if err := rec.Dispatch(kind, kernel, params.bytes(), []Binding{dstBinding, srcBinding}, gx, gy, 1); err != nil {
		return fmt.Errorf("gpu.%s: %w", op, err)
	}
	return nil
}

// alignedBinding binds bytes [start, end) of buf from the nearest offset at or
// below start that storage bindings allow.
func alignedBinding(buf *Buffer, start, end, align uint64) Binding {
	offset := start / align * align
	return Binding{Buffer: buf, Offset: offset, Size: max(end-offset, 4)}
}

// SplitGrid lays groups workgroups out as a gx x gy grid within limit per
// dimension (maxComputeWorkgroupsPerDimension); up to gx-1 workgroups of the
// last row are surplus, which kernels skip.
func SplitGrid(groups uint64, limit uint32) (gx, gy uint32, err error) {
	if limit == 0 {
		return 0, 0, errors.New("device reports no workgroups per dimension")
	}
	x := max(min(groups, uint64(limit)), 1) // no work still needs a valid grid
	y := (groups + x - 1) / x
	if y > uint64(limit) {
		return 0, 0, fmt.Errorf("%d workgroups exceed a %d x %d grid", groups, limit, limit)
	}
	return uint32(x), uint32(y), nil
}

func checkRecorder(op elementwiseOp, rec *Recorder) error {
	if rec == nil || rec.dev == nil {
		return fmt.Errorf("gpu.%s: nil recorder", op)
	}
	return nil
}

// checkF32 checks that t is a live f32 view within its buffer on rec's device.
func checkF32(op elementwiseOp, rec *Recorder, name string, t *Tensor) error {
	switch {
	case t == nil:
		return fmt.Errorf("gpu.%s: %s is nil", op, name)
	case t.Buf == nil || t.Buf.h == nil:
		return fmt.Errorf("gpu.%s: %s has no buffer (nil or released)", op, name)
	case t.Buf.dev != rec.dev:
		return fmt.Errorf("gpu.%s: %s lives on a different device from the recorder", op, name)
	case t.DType != F32:
		return fmt.Errorf("gpu.%s: %s is %s, want f32", op, name, t.DType)
	case t.Offset%4 != 0:
		return fmt.Errorf("gpu.%s: %s offset %d is not a multiple of 4 bytes", op, name, t.Offset)
	}
	for _, s := range t.Shape {
		if s < 0 {
			return fmt.Errorf("gpu.%s: %s has a negative dimension in shape %v", op, name, t.Shape)
		}
	}
	if n := t.Len(); n > math.MaxUint32 {
		return fmt.Errorf("gpu.%s: %s has %d elements, more than u32 indices reach", op, name, n)
	}
	if end := t.Offset + t.Bytes(); end > t.Buf.Size() || end < t.Offset {
		return fmt.Errorf("gpu.%s: %s (shape %v at byte %d) overruns its %d-byte buffer", op, name, t.Shape, t.Offset, t.Buf.Size())
	}
	return nil
}

// overlap says whether two non-empty tensors share bytes of one buffer.
func overlap(a, b *Tensor) bool {
	if a.Buf != b.Buf || a.Len() == 0 || b.Len() == 0 {
		return false
	}
	return a.Offset < b.Offset+b.Bytes() && b.Offset < a.Offset+a.Bytes()
}
