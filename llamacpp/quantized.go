// This file maps GGUF's Q8_0, Q4_0 and Q4_1 blocks onto the project's
// group-affine quantized weights (MLX's layout, SPEC §11 and §13), so that a
// quantized GGUF base stays quantized on disk and on the GPU.

package llamacpp

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/gguf"
	"github.com/sparselora/sparselora/model/safetensors"
)

// blockGroup is the group size of every ggml block type read here: 32
// elements share one scale (and, for Q4_1, one minimum).
const blockGroup = 32

// keepsQuantized says whether tensors of type t become group-affine weights.
func keepsQuantized(t gguf.TensorType) bool {
	return t == gguf.Q8_0 || t == gguf.Q4_0 || t == gguf.Q4_1
}

// affineFromBlocks repacks a GGUF tensor of type Q8_0, Q4_0 or Q4_1 holding
// out rows of in elements as a group-affine weight (groups of 32) with the
// same values: Q8_0 w = d·q with q int8 becomes s = d, code q+128, b =
// -128·d; Q4_0 w = d·(q-8) becomes s = d, code q, b = -8·d; Q4_1 w = d·q + m
// becomes s = d, code q, b = m. ggml's nibble order (element j in the low
// nibble of byte j, element j+16 in the high nibble) becomes MLX's in-order
// codes. Scales and biases are f16, as the blocks hold d and m, unless some
// -128·d or -8·d overflows f16 (|d| above 511.75 for Q8_0, 8188 for Q4_0;
// scaling by a power of two is otherwise exact in f16): then the whole weight
// keeps f32 scales and biases, so that every dequantized value stays exactly
// ggml's. With f16 or f32, s·code + b is exactly d·q for Q8_0 and Q4_0 (both
// products fit f32's mantissa) and is d·q + m rounded once for Q4_1, as
// ggml computes them.
func affineFromBlocks(t gguf.TensorType, raw []byte, out, in int) (*gpu.AffineWeight, error) {
	bits, blockBytes, codesAt := 4, 18, 2
	switch t {
	case gguf.Q8_0:
		bits, blockBytes = 8, 34
	case gguf.Q4_0:
	case gguf.Q4_1:
		blockBytes, codesAt = 20, 4
	default:
		return nil, fmt.Errorf("type %s has no group-affine form", t)
	}
	if in%blockGroup != 0 || out <= 0 {
		return nil, fmt.Errorf("a [%d, %d] weight is no whole number of %s blocks per row", out, in, t)
	}
	groups := out * in / blockGroup
	if len(raw) != groups*blockBytes {
		return nil, fmt.Errorf("%d bytes hold a [%d, %d] %s weight, want %d", len(raw), out, in, t, groups*blockBytes)
	}
	f := gpu.Affine{Bits: bits, Group: blockGroup, Scales: gpu.ScaleF16}
	w := &gpu.AffineWeight{Out: out, In: in, Format: f, Codes: make([]uint32, out*f.CodeWords(in)),
		Scales: make([]float32, groups), Biases: make([]float32, groups)}
	le := binary.LittleEndian
	wordsPerGroup := blockGroup * bits / 32
	for g := range groups {
		blk := raw[g*blockBytes : (g+1)*blockBytes]
		d := safetensors.HalfToFloat32(le.Uint16(blk))
		codes := blk[codesAt:]
		words := w.Codes[g*wordsPerGroup : (g+1)*wordsPerGroup]
		w.Scales[g] = d
		switch t {
		case gguf.Q8_0:
			w.Biases[g] = -128 * d
			for j := range blockGroup {
				words[j/4] |= uint32(codes[j]^0x80) << (8 * (j % 4)) // int8 q -> q+128
			}
		default:
			if t == gguf.Q4_0 {
				w.Biases[g] = -8 * d
			} else {
				w.Biases[g] = safetensors.HalfToFloat32(le.Uint16(blk[2:]))
			}
			for j := range blockGroup {
				code := codes[j%16] & 0x0f
				if j >= 16 {
					code = codes[j-16] >> 4
				}
				words[j/8] |= uint32(code) << (4 * (j % 8))
			}
		}
		if w.Format.Scales == gpu.ScaleF16 && safetensors.HalfToFloat32(safetensors.Float32ToHalf(w.Biases[g])) != w.Biases[g] {
			w.Format.Scales = gpu.ScaleF32
		}
	}
	return w, nil
}

// affineTensors are the MLX tensors of a quantized module: U32 codes
// `<module>.weight` [out, in*bits/32] and `<module>.scales`, `.biases` [out,
// in/32] in f16 or f32.
func affineTensors(module string, w *gpu.AffineWeight) (map[string]safetensors.Tensor, error) {
	codes := make([]byte, 0, 4*len(w.Codes))
	for _, c := range w.Codes {
		codes = binary.LittleEndian.AppendUint32(codes, c)
	}
	dtype := safetensors.F16
	if w.Format.Scales == gpu.ScaleF32 {
		dtype = safetensors.F32
	}
	groupShape := []int{w.Out, w.In / w.Format.Group}
	scales, err := safetensors.NewFloatTensor(dtype, groupShape, w.Scales)
	if err != nil {
		return nil, err
	}
	biases, err := safetensors.NewFloatTensor(dtype, groupShape, w.Biases)
	if err != nil {
		return nil, err
	}
	return map[string]safetensors.Tensor{
		module + ".weight": {Dtype: safetensors.U32, Shape: []int{w.Out, w.Format.CodeWords(w.In)}, Data: codes},
		module + ".scales": scales,
		module + ".biases": biases,
	}, nil
}

// permuteAffineRows applies permuteRows to a quantized weight's rows (codes,
// scales and biases alike).
func permuteAffineRows(w *gpu.AffineWeight, heads int, inverse bool) error {
	var err error
	if w.Codes, err = permuteRows(w.Codes, heads, w.Format.CodeWords(w.In), inverse); err != nil {
		return err
	}
	groups := w.In / w.Format.Group
	if w.Scales, err = permuteRows(w.Scales, heads, groups, inverse); err != nil {
		return err
	}
	w.Biases, err = permuteRows(w.Biases, heads, groups, inverse)
	return err
}

// quantizationJSON adds MLX's "quantization" (and its copy
// "quantization_config") to config.json for the modules kept quantized
// (module -> bits; all in groups of 32): the most common bit width is the
// default, other widths are overrides, and every other quantizable module of
// cfg is overridden with false (it stays float).
func quantizationJSON(cfgRaw []byte, cfg *model.Config, bits map[string]int) ([]byte, error) {
	if len(bits) == 0 {
		return cfgRaw, nil
	}
	count := map[int]int{}
	for _, b := range bits {
		count[b]++
	}
	def := 8
	if count[4] > count[8] {
		def = 4
	}
	q := map[string]any{"group_size": blockGroup, "bits": def, "mode": "affine"}
	for _, m := range model.QuantizableModules(cfg) {
		switch b, ok := bits[m]; {
		case !ok:
			q[m] = false
		case b != def:
			q[m] = map[string]any{"group_size": blockGroup, "bits": b}
		}
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(cfgRaw, &fields); err != nil {
		return nil, fmt.Errorf("llamacpp: config: %w", err)
	}
	raw, err := json.Marshal(q)
	if err != nil {
		return nil, err
	}
	fields["quantization"], fields["quantization_config"] = raw, raw
	return marshal(fields)
}
