package safetensors

import "math"

// Dtype is a tensor element type as spelled in a safetensors header.
type Dtype string

// The element types this package converts to and from float32. The reader also
// accepts the other fixed-size dtypes of the format (see Size) so that a
// checkpoint carrying, say, an I64 buffer still opens; those tensors can only
// be read raw.
const (
	F32  Dtype = "F32"
	BF16 Dtype = "BF16"
	F16  Dtype = "F16"
	// U32 holds MLX's quantized weights: codes packed little-endian (read raw).
	U32 Dtype = "U32"
)

// dtypeSizes lists every dtype of the safetensors format with a whole number
// of bytes per element. The sub-byte types (F4, F6_*) are deliberately absent:
// no LLaMA-family checkpoint this trainer loads uses them, and treating them
// as unknown gives a clear error instead of a byte-size check done wrong.
var dtypeSizes = map[Dtype]int{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
	"I16": 2, "U16": 2, F16: 2, BF16: 2,
	"I32": 4, "U32": 4, F32: 4,
	"I64": 8, "U64": 8, "F64": 8, "C64": 8,
}

// Size is the number of bytes per element, or 0 for a dtype this package does
// not know.
func (d Dtype) Size() int { return dtypeSizes[d] }

// IsFloat reports whether ReadFloat32 can convert this dtype (F32, BF16, F16).
func (d Dtype) IsFloat() bool { return d == F32 || d == BF16 || d == F16 }

// BFloat16ToFloat32 widens a bfloat16 bit pattern; every bfloat16 value,
// including NaN payloads, is exactly representable in float32.
func BFloat16ToFloat32(h uint16) float32 {
	return math.Float32frombits(uint32(h) << 16)
}

// Float32ToBFloat16 rounds to the nearest bfloat16, ties to even, as PyTorch's
// tensor.to(torch.bfloat16) does. NaN stays NaN (quieted) rather than being
// rounded into infinity.
func Float32ToBFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN
		return uint16(b>>16) | 0x0040
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// HalfToFloat32 widens an IEEE 754 binary16 bit pattern exactly, including
// subnormals, infinities and NaN (whose payload is kept).
func HalfToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // infinity or NaN
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0: // normal: rebias the exponent from 15 to 127
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	case mant == 0:
		return math.Float32frombits(sign) // signed zero
	default:
		// Subnormal: mant * 2^-24. Shift the mantissa up until its leading
		// one reaches the implicit-bit position, lowering the exponent to match.
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	}
}

// Float32ToHalf rounds to the nearest IEEE 754 binary16, ties to even:
// values beyond the half range become infinity, tiny values become subnormals
// or signed zero, and NaN stays NaN.
func Float32ToHalf(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant == 0 {
			return sign | 0x7c00
		}
		return sign | 0x7c00 | 0x200 | uint16(mant>>13) // quiet NaN, payload kept
	}
	e := exp - 127 + 15 // the exponent rebiased for binary16
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e >= 1 {
		h := uint32(e)<<10 | mant>>13
		rest := mant & 0x1fff
		if rest > 0x1000 || rest == 0x1000 && h&1 == 1 {
			h++ // a carry out of the mantissa correctly bumps the exponent, up to infinity
		}
		return sign | uint16(h)
	}
	// Subnormal result: the value is m * 2^(e-25) with m the 24-bit significand,
	// and a subnormal half counts units of 2^-24, so shift right by 14-e.
	if e < -10 {
		return sign // below half of the smallest subnormal: rounds to zero
	}
	m := mant | 0x800000
	shift := uint32(14 - e)
	h := m >> shift
	rest := m & (1<<shift - 1)
	half := uint32(1) << (shift - 1)
	if rest > half || rest == half && h&1 == 1 {
		h++ // may carry into the smallest normal, which is the right answer
	}
	return sign | uint16(h)
}
