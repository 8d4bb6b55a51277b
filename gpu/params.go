package gpu

import "encoding/binary"

// PackParams lays out u32 words (an f32 field as math.Float32bits) as a
// kernel's uniform Params struct, bound at binding 0: word i at byte 4i,
// little-endian, zero-padded to a multiple of 16 bytes (WGSL rounds a uniform
// struct's size up to its 16-byte alignment). Every kernel's parameters are
// packed here.
func PackParams(words ...uint32) []byte {
	b := make([]byte, (4*len(words)+15)/16*16)
	for i, w := range words {
		binary.LittleEndian.PutUint32(b[4*i:], w)
	}
	return b
}
