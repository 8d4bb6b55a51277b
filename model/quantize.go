// This file holds MLX's affine quantization (SPEC section 11) on the host:
// the config's "quantization" object, the quantized tensors a checkpoint
// holds, and MLX's own rounding for quantizing float weights at load.

package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model/safetensors"
)

// String names a quantization (Quantization, memory.go) in messages.
func (q Quantization) String() string {
	return fmt.Sprintf("%d-bit, groups of %d", q.Bits, q.GroupSize)
}

// Check reports bits or a group size MLX's affine mode (as this project
// runs it) does not have.
func (q Quantization) Check() error {
	return gpu.Affine{Bits: q.Bits, Group: q.GroupSize}.Check(q.GroupSize)
}

// QuantizationConfig is a checkpoint's MLX quantization (config.json
// "quantization", or "quantization_config"): a default for every quantizable
// module (projections, embedding, LM head) and overrides by module path
// ("model.layers.0.mlp.down_proj"), nil for a module left unquantized
// (`false` in the config).
type QuantizationConfig struct {
	Default   Quantization
	Overrides map[string]*Quantization
}

// For is the spec of a module ("model.embed_tokens", "lm_head",
// "model.layers.3.self_attn.q_proj") in a checkpoint, nil when it is not
// quantized: an override decides; otherwise, as mlx-lm decides when it loads,
// the module is quantized when the checkpoint holds its scales (mlx-lm leaves
// modules whose input size the group does not divide in floats).
func (q *QuantizationConfig) For(module string, hasTensor func(string) bool) *Quantization {
	if q == nil {
		return nil
	}
	if o, ok := q.Overrides[module]; ok {
		return o
	}
	if !hasTensor(module + ".scales") {
		return nil
	}
	d := q.Default
	return &d
}

// QuantizableModules lists the module paths of cfg that MLX quantizes: the
// embedding, the LM head when untied, and every projection.
func QuantizableModules(cfg *Config) []string {
	mods := []string{"model.embed_tokens"}
	if !cfg.TieWordEmbeddings {
		mods = append(mods, "lm_head")
	}
	for i := range cfg.NumHiddenLayers {
		for _, p := range Projections {
			mods = append(mods, fmt.Sprintf("model.layers.%d.%s.%s", i, p.Module(), p))
		}
	}
	return mods
}

// moduleShape is the [out, in] of a quantizable module.
func moduleShape(cfg *Config, module string) []int {
	return ExpectedTensors(&Config{
		VocabSize: cfg.VocabSize, HiddenSize: cfg.HiddenSize, IntermediateSize: cfg.IntermediateSize,
		NumHiddenLayers: cfg.NumHiddenLayers, NumAttentionHeads: cfg.NumAttentionHeads,
		NumKeyValueHeads: cfg.NumKeyValueHeads, HeadDim: cfg.HeadDim, TieWordEmbeddings: cfg.TieWordEmbeddings,
	})[module+".weight"]
}

// parseQuantization reads "quantization" (mlx-lm) or "quantization_config"
// (its copy for transformers): group_size, bits, mode ("affine" or absent),
// and per-module overrides, each an object with group_size and bits or
// false. An override naming no module of the config is an error, as is a
// group size that does not divide a quantized module's input size.
func (c *Config) parseQuantization(top jsonObject) error {
	key := "quantization"
	if !top.has(key) {
		key = "quantization_config"
	}
	obj, ok, err := top.getObject(key)
	if err != nil || !ok {
		return err
	}
	spec := func(o jsonObject) (Quantization, error) {
		bits, okB, err := o.getInt("bits")
		if err != nil {
			return Quantization{}, err
		}
		group, okG, err := o.getInt("group_size")
		if err != nil {
			return Quantization{}, err
		}
		if !okB {
			return Quantization{}, o.errorf("bits", "missing")
		}
		if !okG {
			group = 64 // mlx's default
		}
		q := Quantization{Bits: bits, GroupSize: group}
		if err := q.Check(); err != nil {
			return Quantization{}, o.errorf("bits", "%v", err)
		}
		if mode, ok, err := o.getString("mode"); err != nil {
			return Quantization{}, err
		} else if ok && mode != "affine" {
			return Quantization{}, o.errorf("mode", "quantization mode %q is not supported (want \"affine\")", mode)
		}
		return q, nil
	}
	def, err := spec(obj)
	if err != nil {
		return err
	}
	q := &QuantizationConfig{Default: def, Overrides: map[string]*Quantization{}}
	modules := QuantizableModules(c)
	for name, raw := range obj.values {
		if name == "bits" || name == "group_size" || name == "mode" || name == "quant_method" {
			continue
		}
		if !slices.Contains(modules, name) {
			return obj.errorf(name, "override names no quantizable module of this config (want e.g. %q or %q)", modules[0], modules[len(modules)-1])
		}
		if strings.TrimSpace(string(raw)) == "false" {
			q.Overrides[name] = nil
			continue
		}
		o, _, err := obj.getObject(name)
		if err != nil {
			return err
		}
		s, err := spec(o)
		if err != nil {
			return err
		}
		q.Overrides[name] = &s
	}
	for m, s := range q.Overrides {
		if shape := moduleShape(c, m); s != nil && shape[1]%s.GroupSize != 0 {
			return obj.errorf(m, "group size %d does not divide the input size %d of %s.weight %v", s.GroupSize, shape[1], m, shape)
		}
	}
	c.Quantization = q
	return nil
}

// quantizedShapes are the shapes of a quantized module's tensors in MLX's
// layout: weight [out, in*bits/32] (U32), scales and biases [out, in/G].
func quantizedShapes(shape []int, s Quantization) (weight, scales []int) {
	return []int{shape[0], shape[1] * s.Bits / 32}, []int{shape[0], shape[1] / s.GroupSize}
}

// readAffine reads a quantized module's tensors from a checkpoint, checking
// their dtypes and shapes against the config (shape [out, in], spec s).
func readAffine(ckpt safetensors.Reader, module string, shape []int, s Quantization) (*gpu.AffineWeight, error) {
	if shape[1]%s.GroupSize != 0 {
		return nil, fmt.Errorf("model: %s: tensor %q: group size %d does not divide the input size of the [%d, %d] weight", ckpt.Path(), module+".scales", s.GroupSize, shape[0], shape[1])
	}
	wantW, wantS := quantizedShapes(shape, s)
	wInfo, err := ckpt.Info(module + ".weight")
	if err != nil {
		return nil, err
	}
	if wInfo.Dtype != safetensors.U32 || !slices.Equal(wInfo.Shape, wantW) {
		return nil, fmt.Errorf("model: %s: tensor %q is %s %v, want U32 %v (%s codes of a [%d, %d] weight)",
			wInfo.Path, wInfo.Name, wInfo.Dtype, wInfo.Shape, wantW, s, shape[0], shape[1])
	}
	raw, err := ckpt.ReadRaw(module + ".weight")
	if err != nil {
		return nil, err
	}
	codes := make([]uint32, len(raw)/4)
	for i := range codes {
		codes[i] = binary.LittleEndian.Uint32(raw[4*i:])
	}
	w := &gpu.AffineWeight{Out: shape[0], In: shape[1], Format: gpu.Affine{Bits: s.Bits, Group: s.GroupSize}, Codes: codes}
	var dtype safetensors.Dtype
	for _, part := range []struct {
		name string
		dst  *[]float32
	}{{module + ".scales", &w.Scales}, {module + ".biases", &w.Biases}} {
		info, err := ckpt.Info(part.name)
		if err != nil {
			return nil, fmt.Errorf("model: %w (a %s weight needs it, shape %v)", err, s, wantS)
		}
		if !info.Dtype.IsFloat() || !slices.Equal(info.Shape, wantS) {
			return nil, fmt.Errorf("model: %s: tensor %q is %s %v, want F32, BF16 or F16 %v (groups of %d of a [%d, %d] weight)",
				info.Path, info.Name, info.Dtype, info.Shape, wantS, s.GroupSize, shape[0], shape[1])
		}
		if dtype != "" && info.Dtype != dtype {
			return nil, fmt.Errorf("model: %s: tensor %q is %s but %s.scales is %s", info.Path, info.Name, info.Dtype, module, dtype)
		}
		dtype = info.Dtype
		if *part.dst, err = ckpt.ReadFloat32(part.name); err != nil {
			return nil, err
		}
		if err := checkFinite(info, *part.dst); err != nil {
			return nil, err
		}
	}
	w.Format.Scales = scaleType(dtype)
	return w, nil
}

// scaleType maps a checkpoint dtype to the GPU storage of scales and biases.
func scaleType(d safetensors.Dtype) gpu.ScaleType {
	switch d {
	case safetensors.BF16:
		return gpu.ScaleBF16
	case safetensors.F16:
		return gpu.ScaleF16
	}
	return gpu.ScaleF32
}

// QuantizeAffine quantizes a row-major [out, in] weight with MLX's affine
// rounding (mlx/backend/cpu/quantized.cpp, `quantize`, which mx.quantize
// runs), in float32 as MLX computes it: per group, with n = 2^bits - 1,
// scale = max((max - min)/n, 1e-7), negated unless |min| > |max|; the edge
// (min or max, whichever has the larger magnitude) is q0 = rint(edge/scale)
// and, when q0 != 0, the scale becomes edge/q0 and the bias edge (else the
// bias is 0), so the edge is represented exactly; codes are rint((w -
// bias)/scale) clamped to [0, n]. Scales and biases are then rounded to
// scales' type (the weight's dtype in MLX), as MLX stores them.
func QuantizeAffine(values []float32, out, in int, s Quantization, scales gpu.ScaleType) (*gpu.AffineWeight, error) {
	f := gpu.Affine{Bits: s.Bits, Group: s.GroupSize, Scales: scales}
	if err := f.Check(in); err != nil {
		return nil, err
	}
	if len(values) != out*in {
		return nil, fmt.Errorf("quantize: %d values for a [%d, %d] weight", len(values), out, in)
	}
	groups := in / s.GroupSize
	w := &gpu.AffineWeight{Out: out, In: in, Format: f,
		Codes: make([]uint32, out*f.CodeWords(in)), Scales: make([]float32, out*groups), Biases: make([]float32, out*groups)}
	nBins := float32(int(1)<<s.Bits - 1)
	const eps = float32(1e-7)
	for r := 0; r < out; r++ {
		for g := 0; g < groups; g++ {
			group := values[r*in+g*s.GroupSize : r*in+(g+1)*s.GroupSize]
			wMin, wMax := float32(math.Inf(1)), float32(math.Inf(-1))
			for _, v := range group {
				wMin, wMax = min(wMin, v), max(wMax, v)
			}
			mask := abs32(wMin) > abs32(wMax)
			scale := max(float32(wMax-wMin)/nBins, eps)
			edge := wMax
			if mask {
				edge = wMin
			} else {
				scale = -scale
			}
			q0 := rint32(float32(edge / scale))
			bias := float32(0)
			if q0 != 0 {
				scale = float32(edge / q0)
				bias = edge
			}
			for j, v := range group {
				q := rint32(float32(float32(v-bias) / scale))
				q = min(max(q, 0), nBins)
				c := g*s.GroupSize + j
				bit := c * s.Bits
				w.Codes[r*f.CodeWords(in)+bit/32] |= uint32(q) << (bit % 32)
			}
			w.Scales[r*groups+g] = roundScale(scales, scale)
			w.Biases[r*groups+g] = roundScale(scales, bias)
		}
	}
	return w, nil
}

func abs32(x float32) float32 { return float32(math.Abs(float64(x))) }

// rint32 rounds to the nearest integer, ties to even (C's rint in the
// default rounding mode).
func rint32(x float32) float32 { return float32(math.RoundToEven(float64(x))) }

// roundScale rounds a float32 to the scale type (nearest, ties to even).
func roundScale(t gpu.ScaleType, v float32) float32 {
	switch t {
	case gpu.ScaleBF16:
		return gpu.FromBF16(gpu.ToBF16(v))
	case gpu.ScaleF16:
		return safetensors.HalfToFloat32(safetensors.Float32ToHalf(v))
	}
	return v
}

// DequantizedReader presents a checkpoint that cfg.Quantization quantizes as
// a float one, for the code that reads weights on the host (merge): each
// quantized module's weight reads as F32 [out, in] holding s*q + b, and its
// scales and biases are hidden. Other tensors pass through. A checkpoint
// without quantization comes back as it is.
func DequantizedReader(cfg *Config, ckpt safetensors.Reader) safetensors.Reader {
	if cfg.Quantization == nil {
		return ckpt
	}
	d := &dequantizedReader{Reader: ckpt, specs: map[string]Quantization{}, shapes: map[string][]int{}, hidden: map[string]bool{}}
	for _, m := range QuantizableModules(cfg) {
		if s := cfg.Quantization.For(m, holds(ckpt)); s != nil {
			d.specs[m+".weight"], d.shapes[m+".weight"] = *s, moduleShape(cfg, m)
			d.hidden[m+".scales"], d.hidden[m+".biases"] = true, true
		}
	}
	return d
}

type dequantizedReader struct {
	safetensors.Reader
	specs  map[string]Quantization
	shapes map[string][]int
	hidden map[string]bool
}

func (d *dequantizedReader) Names() []string {
	var names []string
	for _, n := range d.Reader.Names() {
		if !d.hidden[n] {
			names = append(names, n)
		}
	}
	return names
}

func (d *dequantizedReader) Info(name string) (safetensors.TensorInfo, error) {
	if d.hidden[name] {
		return safetensors.TensorInfo{}, fmt.Errorf("%s: tensor %q (quantization scales, folded into the dequantized weight): %w", d.Path(), name, safetensors.ErrNotFound)
	}
	info, err := d.Reader.Info(name)
	if err != nil {
		return info, err
	}
	if shape, ok := d.shapes[name]; ok {
		info.Dtype, info.Shape, info.Begin, info.End = safetensors.F32, shape, 0, int64(4*shape[0]*shape[1])
	}
	return info, nil
}

func (d *dequantizedReader) ReadFloat32(name string) ([]float32, error) {
	s, ok := d.specs[name]
	if !ok {
		return d.Reader.ReadFloat32(name)
	}
	w, err := readAffine(d.Reader, strings.TrimSuffix(name, ".weight"), d.shapes[name], s)
	if err != nil {
		return nil, err
	}
	return w.Dequantize(), nil
}

func (d *dequantizedReader) ReadRaw(name string) ([]byte, error) {
	if _, ok := d.specs[name]; !ok {
		return d.Reader.ReadRaw(name)
	}
	values, err := d.ReadFloat32(name)
	if err != nil {
		return nil, err
	}
	raw := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	return raw, nil
}
