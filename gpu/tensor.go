package gpu

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// DType is the element type of a tensor in GPU memory.
type DType int

const (
	// F32 is IEEE float32, one per 4 bytes.
	F32 DType = iota
	// BF16 is bfloat16 packed two per u32: element 2i in the low half, 2i+1 in the
	// high half. Used for frozen weights; kernels widen it to f32.
	BF16
	// Quantized is an affine-quantized weight [out, in] (Tensor.Affine holds
	// the format; see Affine for the layout). Kernels dequantize it as they
	// load it; only whole rows can be viewed.
	Quantized
)

func (t DType) String() string {
	switch t {
	case BF16:
		return "bf16"
	case Quantized:
		return "quantized"
	}
	return "f32"
}

// Bytes is the storage size of n elements (rounded up to whole u32 words).
// A Quantized tensor's size depends on its row length: see Tensor.Bytes.
func (t DType) Bytes(n int) uint64 {
	if t == BF16 {
		return uint64((n+1)/2) * 4
	}
	return uint64(n) * 4
}

// Tensor is a row-major array in a GPU buffer. A tensor made by Device.NewTensor
// owns its buffer; every other one (made by Sub or Rows, or a struct literal over
// another tensor's Buf) is a view, and releasing a view leaves the buffer alone.
type Tensor struct {
	Buf    *Buffer
	Offset uint64 // bytes; a multiple of 4
	Shape  []int
	DType  DType
	// Affine is the format of a Quantized tensor (nil otherwise).
	Affine *Affine

	// owner says Release frees Buf. Only NewTensor sets it, so views written as
	// struct literals in other packages can never free their parent's buffer.
	owner bool
}

// Len is the number of elements.
func (t *Tensor) Len() int {
	n := 1
	for _, s := range t.Shape {
		n *= s
	}
	return n
}

// Bytes is the tensor's storage size.
func (t *Tensor) Bytes() uint64 {
	if t.DType == Quantized {
		return uint64(t.Shape[0]) * t.affineRowBytes()
	}
	return t.DType.Bytes(t.Len())
}

// Binding binds exactly the tensor's bytes.
func (t *Tensor) Binding() Binding {
	return Binding{Buffer: t.Buf, Offset: t.Offset, Size: max(t.Bytes(), 4)}
}

// View binds the tensor's bytes starting from the nearest offset at or below it
// that storage bindings allow (minStorageBufferOffsetAlignment), and returns the
// index of the tensor's first element inside that binding, in its own element
// units (f32, bf16 halves, or u32 words for a Quantized tensor). Kernels take the index as a parameter, so tensors
// can sit at any 4-byte offset and large buffers are never bound whole.
func (t *Tensor) View() (Binding, uint32) {
	align := uint64(max(t.Buf.dev.Limits.MinStorageBufferOffsetAlignment, 4))
	start := t.Offset / align * align
	words := (t.Offset - start) / 4
	if t.DType == BF16 {
		words *= 2
	}
	return Binding{Buffer: t.Buf, Offset: start, Size: max(t.Offset+t.Bytes()-start, 4)}, uint32(words)
}

// NewTensor allocates a zero-filled tensor in its own buffer.
func (d *Device) NewTensor(dtype DType, label string, shape ...int) (*Tensor, error) {
	t := &Tensor{Shape: append([]int(nil), shape...), DType: dtype}
	for _, s := range shape {
		if s < 0 {
			return nil, fmt.Errorf("tensor %s: negative dimension in shape %v", label, shape)
		}
	}
	b, err := d.NewBuffer(t.Bytes(), label)
	if err != nil {
		return nil, err
	}
	t.Buf = b
	t.owner = true
	return t, nil
}

// Release frees the tensor's buffer if the tensor owns it (it came from
// NewTensor); releasing a view does nothing. Releasing twice is harmless.
func (t *Tensor) Release() {
	if t != nil && t.owner {
		t.Buf.Release()
	}
}

// Sub is a view of t's elements from offset on, shaped shape; it must lie inside
// t, and for BF16 start on an even element (views start on whole u32 words).
func (t *Tensor) Sub(offset int, shape ...int) (*Tensor, error) {
	v := &Tensor{Buf: t.Buf, Shape: append([]int(nil), shape...), DType: t.DType, Affine: t.Affine}
	for _, s := range shape {
		if s < 0 {
			return nil, fmt.Errorf("view of shape %v: negative dimension", shape)
		}
	}
	if offset < 0 || offset+v.Len() > t.Len() {
		return nil, fmt.Errorf("view of %d elements at %d overruns the %v tensor", v.Len(), offset, t.Shape)
	}
	if t.DType == BF16 && offset%2 != 0 {
		return nil, fmt.Errorf("bf16 view at odd element %d: views start on whole u32 words", offset)
	}
	if t.DType == Quantized {
		if len(shape) != 2 || shape[1] != t.Shape[1] || offset%t.Shape[1] != 0 {
			return nil, fmt.Errorf("view of shape %v at element %d of a quantized %v tensor: only whole rows can be viewed", shape, offset, t.Shape)
		}
		v.Offset = t.Offset + uint64(offset/t.Shape[1])*t.affineRowBytes()
		return v, nil
	}
	v.Offset = t.Offset + t.DType.Bytes(offset)
	return v, nil
}

// Rows is a view of rows [r0, r0+n) of t along its first dimension.
func (t *Tensor) Rows(r0, n int) (*Tensor, error) {
	if len(t.Shape) == 0 {
		return nil, errors.New("rows of a scalar tensor")
	}
	if r0 < 0 || n < 0 || r0+n > t.Shape[0] {
		return nil, fmt.Errorf("rows [%d, %d) of a tensor of shape %v", r0, r0+n, t.Shape)
	}
	rowLen := 1
	for _, s := range t.Shape[1:] {
		rowLen *= s
	}
	return t.Sub(r0*rowLen, append([]int{n}, t.Shape[1:]...)...)
}

// Upload writes data (len must equal Len) into the tensor, converting to bf16
// with round-to-nearest-even when the tensor is BF16.
func (t *Tensor) Upload(data []float32) error {
	if len(data) != t.Len() {
		return fmt.Errorf("upload of %d values into a tensor of shape %v (%d elements)", len(data), t.Shape, t.Len())
	}
	if t.DType == Quantized {
		return errors.New("upload of float values into a quantized tensor: quantize on the host and use NewAffineTensor")
	}
	var raw []byte
	if t.DType == BF16 {
		raw = PackBF16(data)
	} else {
		raw = F32Bytes(data)
	}
	return t.Buf.Write(t.Offset, raw)
}

// Download reads the tensor back as float32, waiting for submitted work; a
// Quantized tensor comes back dequantized (AffineWeight.Dequantize).
func (t *Tensor) Download(ctx context.Context) ([]float32, error) {
	if t.DType == Quantized {
		w, err := t.DownloadAffine(ctx)
		if err != nil {
			return nil, err
		}
		return w.Dequantize(), nil
	}
	raw, err := t.Buf.Read(ctx, t.Offset, t.Bytes())
	if err != nil {
		return nil, err
	}
	if t.DType == BF16 {
		return UnpackBF16(raw, t.Len()), nil
	}
	return BytesF32(raw), nil
}

// F32Bytes encodes float32 values little-endian.
func F32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// BytesF32 decodes little-endian float32 values.
func BytesF32(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

// U32Bytes encodes uint32 values little-endian.
func U32Bytes(v []uint32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], x)
	}
	return b
}

// ToBF16 rounds a float32 to bfloat16 bits (round to nearest, ties to even;
// NaN stays NaN).
func ToBF16(x float32) uint16 {
	bits := math.Float32bits(x)
	if bits&0x7fffffff > 0x7f800000 {
		return uint16(bits>>16) | 0x40
	}
	bits += 0x7fff + (bits>>16)&1
	return uint16(bits >> 16)
}

// FromBF16 widens bfloat16 bits to float32 exactly.
func FromBF16(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// PackBF16 converts values to bf16, two per little-endian u32.
func PackBF16(v []float32) []byte {
	b := make([]byte, DType(BF16).Bytes(len(v)))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], ToBF16(x))
	}
	return b
}

// UnpackBF16 reads n bf16 values packed two per u32.
func UnpackBF16(b []byte, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = FromBF16(binary.LittleEndian.Uint16(b[2*i:]))
	}
	return v
}
