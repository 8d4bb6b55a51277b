package gguf

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/sparselora/sparselora/model/safetensors"
)

// Block layouts (ggml-common.h): Q8_0 is an f16 scale d and 32 int8 codes,
// w = d*q. Q4_0 is an f16 scale d and 16 bytes whose byte j holds element j
// in its low nibble and element j+16 in its high nibble, w = d*(q-8). Q4_1 is
// f16 d, f16 m and the same nibbles, w = d*q + m.
const qk = 32

// Decode widens n elements of type t stored in raw to float32.
func Decode(t TensorType, raw []byte, n int64) ([]float32, error) {
	want, err := t.RowBytes(n)
	if err != nil {
		return nil, err
	}
	if int64(len(raw)) != want {
		return nil, fmt.Errorf("%d bytes hold %d elements of %s, want %d bytes", len(raw), n, t, want)
	}
	le := binary.LittleEndian
	out := make([]float32, n)
	switch t {
	case F32:
		for i := range out {
			out[i] = math.Float32frombits(le.Uint32(raw[4*i:]))
		}
	case F16:
		for i := range out {
			out[i] = safetensors.HalfToFloat32(le.Uint16(raw[2*i:]))
		}
	case BF16:
		for i := range out {
			out[i] = safetensors.BFloat16ToFloat32(le.Uint16(raw[2*i:]))
		}
	case Q8_0:
		for b := 0; b < len(out)/qk; b++ {
			blk := raw[b*34:]
			d := safetensors.HalfToFloat32(le.Uint16(blk))
			for j := 0; j < qk; j++ {
				out[b*qk+j] = d * float32(int8(blk[2+j]))
			}
		}
	case Q4_0:
		for b := 0; b < len(out)/qk; b++ {
			blk := raw[b*18:]
			d := safetensors.HalfToFloat32(le.Uint16(blk))
			for j := 0; j < qk/2; j++ {
				out[b*qk+j] = d * float32(int(blk[2+j]&0x0f)-8)
				out[b*qk+j+qk/2] = d * float32(int(blk[2+j]>>4)-8)
			}
		}
	case Q4_1:
		for b := 0; b < len(out)/qk; b++ {
			blk := raw[b*20:]
			d := safetensors.HalfToFloat32(le.Uint16(blk))
			m := safetensors.HalfToFloat32(le.Uint16(blk[2:]))
			for j := 0; j < qk/2; j++ {
				out[b*qk+j] = d*float32(blk[4+j]&0x0f) + m
				out[b*qk+j+qk/2] = d*float32(blk[4+j]>>4) + m
			}
		}
	default:
		return nil, fmt.Errorf("type %s cannot be decoded; sparselora reads %s", t, DecodableTypes)
	}
	return out, nil
}

// Encode stores values as type t: F32, F16, BF16 (round to nearest even),
// Q8_0 and Q4_0 (rounded as ggml-quants.c's quantize_row_q8_0_ref and
// quantize_row_q4_0_ref do, so the bytes equal llama.cpp's).
func Encode(t TensorType, values []float32) ([]byte, error) {
	n := int64(len(values))
	size, err := t.RowBytes(n)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	out := make([]byte, 0, size)
	switch t {
	case F32:
		for _, v := range values {
			out = le.AppendUint32(out, math.Float32bits(v))
		}
	case F16:
		for _, v := range values {
			out = le.AppendUint16(out, safetensors.Float32ToHalf(v))
		}
	case BF16:
		for _, v := range values {
			out = le.AppendUint16(out, safetensors.Float32ToBFloat16(v))
		}
	case Q8_0:
		for b := 0; b < len(values)/qk; b++ {
			out = appendQ8_0(out, values[b*qk:(b+1)*qk])
		}
	case Q4_0:
		for b := 0; b < len(values)/qk; b++ {
			out = appendQ4_0(out, values[b*qk:(b+1)*qk])
		}
	default:
		return nil, fmt.Errorf("type %s cannot be written; sparselora writes F32, F16, BF16, Q8_0, Q4_0", t)
	}
	return out, nil
}

// appendQ8_0 is quantize_row_q8_0_ref for one block: d = amax/127, codes
// roundf(x/d) (half away from zero), all in float32.
func appendQ8_0(out []byte, x []float32) []byte {
	var amax float32
	for _, v := range x {
		amax = max(amax, float32(math.Abs(float64(v))))
	}
	d := amax / 127
	var id float32
	if d != 0 {
		id = 1 / d
	}
	out = binary.LittleEndian.AppendUint16(out, safetensors.Float32ToHalf(d))
	for _, v := range x {
		out = append(out, byte(int8(math.Round(float64(float32(v*id))))))
	}
	return out
}

// appendQ4_0 is quantize_row_q4_0_ref for one block: d = max/-8 with max the
// value of largest magnitude (the first such), codes min(15, int8(x/d+8.5)).
func appendQ4_0(out []byte, x []float32) []byte {
	var amax, vmax float32
	for _, v := range x {
		if a := float32(math.Abs(float64(v))); amax < a {
			amax, vmax = a, v
		}
	}
	d := vmax / -8
	var id float32
	if d != 0 {
		id = 1 / d
	}
	out = binary.LittleEndian.AppendUint16(out, safetensors.Float32ToHalf(d))
	code := func(v float32) byte {
		// C's (int8_t) conversion truncates toward zero; x/d lies in
		// [-1, 1]·8 so x/d+8.5 is in [0.5, 16.5] and fits.
		return byte(min(15, int8(float32(v*id)+8.5)))
	}
	for j := 0; j < qk/2; j++ {
		out = append(out, code(x[j])|code(x[j+qk/2])<<4)
	}
	return out
}
