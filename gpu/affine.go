package gpu

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/sparselora/sparselora/model/safetensors"
)

// Affine is MLX's affine quantization of a weight W [out, in] (SPEC section
// 11): each group of Group consecutive inputs of a row has a scale s and a
// bias b, and w = s*q + b with q an unsigned Bits-bit code. Codes form a
// little-endian bit stream per row in u32 words (code j of a row sits in bits
// Bits*(j mod 32/Bits).. of word j*Bits/32).
//
// On the GPU a quantized weight is one buffer of rows, each row its code words
// followed by its groups' scale and bias: one word per group (scale in the low
// half, bias in the high half) when they are bf16 or f16, as the checkpoints
// that MLX writes hold them, so that a 4-bit weight with groups of 64 costs 4.5
// bits per weight; two words (scale, bias) when they are f32. Keeping them in
// their checkpoint type makes the kernels' weights exactly the checkpoint's;
// interleaving them with the codes row by row keeps a block of rows (split for
// the binding limit) or a gathered row in one contiguous range of one binding,
// so the GEMM's bindings are the same as for f32 and bf16 weights.
type Affine struct {
	Bits, Group int
	Scales      ScaleType
}

// ScaleType is the storage type of an affine weight's scales and biases.
type ScaleType int

// Scale types; the values are the kernels' AFFINE_SCALES constant.
const (
	ScaleF32 ScaleType = iota
	ScaleBF16
	ScaleF16
)

func (s ScaleType) String() string {
	switch s {
	case ScaleBF16:
		return "bf16"
	case ScaleF16:
		return "f16"
	}
	return "f32"
}

func (a Affine) String() string { return fmt.Sprintf("%d-bit/g%d/%s", a.Bits, a.Group, a.Scales) }

// Check reports an unsupported format or an input size the groups do not
// divide.
func (a Affine) Check(in int) error {
	if a.Bits != 4 && a.Bits != 8 {
		return fmt.Errorf("affine quantization: %d bits (want 4 or 8)", a.Bits)
	}
	if a.Group != 32 && a.Group != 64 && a.Group != 128 {
		return fmt.Errorf("affine quantization: group size %d (want 32, 64 or 128)", a.Group)
	}
	if a.Scales != ScaleF32 && a.Scales != ScaleBF16 && a.Scales != ScaleF16 {
		return fmt.Errorf("affine quantization: unknown scale type %d", a.Scales)
	}
	if in <= 0 || in%a.Group != 0 {
		return fmt.Errorf("affine quantization: group size %d does not divide the input size %d", a.Group, in)
	}
	return nil
}

// CodeWords is the number of u32 code words of a row of in inputs.
func (a Affine) CodeWords(in int) int { return in * a.Bits / 32 }

// scaleWords is the number of words one group's scale and bias take.
func (a Affine) scaleWords() int {
	if a.Scales == ScaleF32 {
		return 2
	}
	return 1
}

// RowWords is the number of u32 words a row of in inputs takes on the GPU.
func (a Affine) RowWords(in int) int { return a.CodeWords(in) + in/a.Group*a.scaleWords() }

// affineConsts are the kernel constants that select an affine weight's
// loads: the flag (B_AFFINE in the GEMM, AFFINE elsewhere) and the format.
// Kernels without an affine operand get the same names with the flag off, so
// that their source compiles. The loads themselves are prelude.wgsl's
// load_affine.
func affineConsts(flag string, a *Affine) []Const {
	if a == nil {
		return []Const{Bool(flag, false), U32("AFFINE_BITS", 4), U32("AFFINE_GROUP", 32), U32("AFFINE_SCALES", 0)}
	}
	return []Const{Bool(flag, true), U32("AFFINE_BITS", a.Bits), U32("AFFINE_GROUP", a.Group), U32("AFFINE_SCALES", int(a.Scales))}
}

// AffineConsts are the constants kernels outside package gpu compile with to
// read a weight t (quantized or not): AFFINE (bool) and the format's
// AFFINE_BITS, AFFINE_GROUP and AFFINE_SCALES.
func AffineConsts(t *Tensor) []Const { return affineConsts("AFFINE", t.Affine) }

// AffineWeight is a quantized weight on the host in MLX's layout: Codes
// [Out, In*Bits/32], Scales and Biases [Out, In/Group], the latter as float32
// values exactly representable in Format.Scales.
type AffineWeight struct {
	Out, In        int
	Format         Affine
	Codes          []uint32
	Scales, Biases []float32
}

// Check verifies the sizes of the host arrays.
func (w *AffineWeight) Check() error {
	if err := w.Format.Check(w.In); err != nil {
		return err
	}
	if w.Out <= 0 {
		return fmt.Errorf("affine weight with %d rows", w.Out)
	}
	if want := w.Out * w.Format.CodeWords(w.In); len(w.Codes) != want {
		return fmt.Errorf("affine weight [%d, %d]: %d code words, want %d ([%d, %d])", w.Out, w.In, len(w.Codes), want, w.Out, w.Format.CodeWords(w.In))
	}
	groups := w.Out * w.In / w.Format.Group
	if len(w.Scales) != groups || len(w.Biases) != groups {
		return fmt.Errorf("affine weight [%d, %d]: %d scales and %d biases, want %d ([%d, %d])", w.Out, w.In, len(w.Scales), len(w.Biases), groups, w.Out, w.In/w.Format.Group)
	}
	return nil
}

// Code returns the code of element (r, c).
func (w *AffineWeight) Code(r, c int) uint32 {
	bit := c * w.Format.Bits
	word := w.Codes[r*w.Format.CodeWords(w.In)+bit/32]
	return word >> (bit % 32) & (1<<w.Format.Bits - 1)
}

// Dequantize returns W as float32, each element s*q + b rounded once (as a
// fused multiply-add, DequantizeRow's fused).
func (w *AffineWeight) Dequantize() []float32 {
	out := make([]float32, w.Out*w.In)
	for r := 0; r < w.Out; r++ {
		w.DequantizeRow(r, out[r*w.In:(r+1)*w.In], true)
	}
	return out
}

// DequantizeRow writes row r of W into dst ([In]): each element s*q + b as
// the kernels' load_affine computes it with WGSL's fma, which an
// implementation may evaluate fused (one rounding, fused set) or as a
// product and a sum (two roundings; lavapipe does). The two differ in the
// last bit only when s*q is not exact in float32, which needs f32 scales:
// bf16 and f16 scales (at most 11 significant bits) times codes of at most
// 8 bits are exact. Host code that must give a device's values (the
// embedding table kept in host memory) asks which the device does.
func (w *AffineWeight) DequantizeRow(r int, dst []float32, fused bool) {
	f := w.Format
	codes := w.Codes[r*f.CodeWords(w.In) : (r+1)*f.CodeWords(w.In)]
	groups := w.In / f.Group
	perWord, mask := 32/f.Bits, uint32(1)<<f.Bits-1
	var s, b float32
	for c := range dst[:w.In] {
		if c%f.Group == 0 {
			s, b = w.Scales[r*groups+c/f.Group], w.Biases[r*groups+c/f.Group]
		}
		q := float32(codes[c/perWord] >> (uint(c%perWord) * uint(f.Bits)) & mask)
		if fused {
			dst[c] = fusedMultiplyAdd32(s, q, b)
		} else {
			dst[c] = float32(s*q) + b // the conversion rounds the product: Go must not fuse it
		}
	}
}

// fusedMultiplyAdd32 is s*q + b rounded once to float32. The product is exact
// in float64 (24 + 24 bits) and the sum is rounded there first; that
// rounding can change the float32 result only when it lands exactly halfway
// between two float32 values, where the sum's exact remainder (TwoSum)
// decides.
func fusedMultiplyAdd32(s, q, b float32) float32 {
	p, c := float64(s)*float64(q), float64(b)
	sum := p + c
	r := float32(sum)
	if float64(r) == sum || math.IsInf(float64(r), 0) {
		return r
	}
	toward := math.Inf(1)
	if sum < float64(r) {
		toward = math.Inf(-1)
	}
	other := math.Nextafter32(r, float32(toward))
	if (float64(r)+float64(other))/2 != sum {
		return r // not halfway: the float64 rounding kept the side
	}
	bb := sum - p
	if rest := (p - (sum - bb)) + (c - bb); rest != 0 && (rest > 0) == (other > r) {
		return other
	}
	return r
}

// encodeScale is a scale or bias in its storage type, failing when the value
// does not fit it exactly (the GPU must hold the checkpoint's values).
func encodeScale(t ScaleType, v float32) (uint16, error) {
	var h uint16
	var back float32
	switch t {
	case ScaleBF16:
		h = ToBF16(v)
		back = FromBF16(h)
	case ScaleF16:
		h = safetensors.Float32ToHalf(v)
		back = safetensors.HalfToFloat32(h)
	}
	if math.Float32bits(back) != math.Float32bits(v) {
		return 0, fmt.Errorf("affine quantization: scale or bias %v is not exactly a %s value", v, t)
	}
	return h, nil
}

// pack lays the weight out as the GPU rows described at Affine.
func (w *AffineWeight) pack() ([]byte, error) {
	if err := w.Check(); err != nil {
		return nil, err
	}
	f := w.Format
	codeWords, rowWords, groups := f.CodeWords(w.In), f.RowWords(w.In), w.In/f.Group
	out := make([]byte, 4*w.Out*rowWords)
	for r := 0; r < w.Out; r++ {
		row := out[4*r*rowWords:]
		for i, c := range w.Codes[r*codeWords : (r+1)*codeWords] {
			binary.LittleEndian.PutUint32(row[4*i:], c)
		}
		sb := row[4*codeWords:]
		for g := 0; g < groups; g++ {
			s, b := w.Scales[r*groups+g], w.Biases[r*groups+g]
			if f.Scales == ScaleF32 {
				binary.LittleEndian.PutUint32(sb[8*g:], math.Float32bits(s))
				binary.LittleEndian.PutUint32(sb[8*g+4:], math.Float32bits(b))
				continue
			}
			hs, err := encodeScale(f.Scales, s)
			if err != nil {
				return nil, fmt.Errorf("row %d group %d: %w", r, g, err)
			}
			hb, err := encodeScale(f.Scales, b)
			if err != nil {
				return nil, fmt.Errorf("row %d group %d: %w", r, g, err)
			}
			binary.LittleEndian.PutUint32(sb[4*g:], uint32(hs)|uint32(hb)<<16)
		}
	}
	return out, nil
}

// unpackAffine reads GPU rows back into MLX's layout.
func unpackAffine(raw []byte, out, in int, f Affine) *AffineWeight {
	codeWords, rowWords, groups := f.CodeWords(in), f.RowWords(in), in/f.Group
	w := &AffineWeight{Out: out, In: in, Format: f,
		Codes: make([]uint32, out*codeWords), Scales: make([]float32, out*groups), Biases: make([]float32, out*groups)}
	for r := 0; r < out; r++ {
		row := raw[4*r*rowWords:]
		for i := 0; i < codeWords; i++ {
			w.Codes[r*codeWords+i] = binary.LittleEndian.Uint32(row[4*i:])
		}
		sb := row[4*codeWords:]
		for g := 0; g < groups; g++ {
			var s, b float32
			switch f.Scales {
			case ScaleF32:
				s = math.Float32frombits(binary.LittleEndian.Uint32(sb[8*g:]))
				b = math.Float32frombits(binary.LittleEndian.Uint32(sb[8*g+4:]))
			case ScaleBF16:
				s = FromBF16(binary.LittleEndian.Uint16(sb[4*g:]))
				b = FromBF16(binary.LittleEndian.Uint16(sb[4*g+2:]))
			case ScaleF16:
				s = safetensors.HalfToFloat32(binary.LittleEndian.Uint16(sb[4*g:]))
				b = safetensors.HalfToFloat32(binary.LittleEndian.Uint16(sb[4*g+2:]))
			}
			w.Scales[r*groups+g], w.Biases[r*groups+g] = s, b
		}
	}
	return w
}

// NewAffineTensor uploads a quantized weight; the tensor's Shape is the
// logical [Out, In] and its DType Quantized.
func (d *Device) NewAffineTensor(w *AffineWeight, label string) (*Tensor, error) {
	raw, err := w.pack()
	if err != nil {
		return nil, fmt.Errorf("tensor %s: %w", label, err)
	}
	f := w.Format
	t := &Tensor{Shape: []int{w.Out, w.In}, DType: Quantized, Affine: &f}
	b, err := d.NewBuffer(uint64(len(raw)), label)
	if err != nil {
		return nil, err
	}
	t.Buf, t.owner = b, true
	if err := b.Write(0, raw); err != nil {
		b.Release()
		return nil, err
	}
	return t, nil
}

// affineRowBytes is the byte size of one row of a quantized tensor.
func (t *Tensor) affineRowBytes() uint64 {
	return uint64(4 * t.Affine.RowWords(t.Shape[1]))
}

// checkAffine verifies that a Quantized tensor is a weight [out, in] with a
// valid format.
func (t *Tensor) checkAffine() error {
	if t.Affine == nil || len(t.Shape) != 2 {
		return errors.New("quantized tensor without a format or not of shape [out, in]")
	}
	return t.Affine.Check(t.Shape[1])
}

// DownloadAffine reads a quantized tensor back in MLX's layout.
func (t *Tensor) DownloadAffine(ctx context.Context) (*AffineWeight, error) {
	if t.DType != Quantized {
		return nil, fmt.Errorf("tensor of dtype %s is not quantized", t.DType)
	}
	if err := t.checkAffine(); err != nil {
		return nil, err
	}
	raw, err := t.Buf.Read(ctx, t.Offset, t.Bytes())
	if err != nil {
		return nil, err
	}
	return unpackAffine(raw, t.Shape[0], t.Shape[1], *t.Affine), nil
}
