// This file reads a Hugging Face config.json into Config, with HF's defaults
// and its two RoPE layouts, and computes the RoPE inverse frequencies.

package model

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Architecture is a supported HF model_type.
type Architecture string

// The LLaMA-family architectures the trainer runs. They share one decoder
// layout and differ only in the details Config records (biases, defaults).
const (
	ArchLlama   Architecture = "llama"
	ArchMistral Architecture = "mistral"
	ArchQwen2   Architecture = "qwen2"
)

// archInfo holds what differs between the architectures when reading a
// config: the HF class name in "architectures" and the HF config class's
// defaults for fields a config.json may leave out.
type archInfo struct {
	className     string
	maxPositions  int
	qkvBiasAlways bool // Qwen2 hard-codes q/k/v biases
}

var architectures = map[Architecture]archInfo{
	ArchLlama:   {className: "LlamaForCausalLM", maxPositions: 2048},
	ArchMistral: {className: "MistralForCausalLM", maxPositions: 4096 * 32},
	ArchQwen2:   {className: "Qwen2ForCausalLM", maxPositions: 32768, qkvBiasAlways: true},
}

// RopeType is the RoPE variant (HF's rope_type).
type RopeType string

// The supported RoPE variants.
const (
	RopeDefault RopeType = "default"
	RopeLinear  RopeType = "linear" // positions divided by Factor
	RopeLlama3  RopeType = "llama3" // Llama 3.1's frequency-dependent scaling
)

// Rope holds the rotary embedding parameters, normalised from either config
// layout. Fields a type does not use are zero.
type Rope struct {
	Type  RopeType
	Theta float64 // the base
	// Factor is the scaling factor of linear and llama3.
	Factor float64
	// LowFreqFactor, HighFreqFactor and OriginalMaxPositionEmbeddings are
	// llama3's.
	LowFreqFactor                 float64
	HighFreqFactor                float64
	OriginalMaxPositionEmbeddings int
}

// Config is the architecture of a LLaMA-family model as read from an HF
// config.json, with HF's defaults applied.
type Config struct {
	// Path is the file the config was read from; errors name it.
	Path         string
	Architecture Architecture

	VocabSize             int
	HiddenSize            int
	IntermediateSize      int
	NumHiddenLayers       int
	NumAttentionHeads     int
	NumKeyValueHeads      int // equals NumAttentionHeads without GQA
	HeadDim               int // may differ from HiddenSize/NumAttentionHeads when the file sets it
	RMSNormEps            float64
	MaxPositionEmbeddings int
	TieWordEmbeddings     bool // lm_head shares embed_tokens' weight

	// AttentionBias: q_proj, k_proj and v_proj have biases (always for Qwen2;
	// LLaMA's attention_bias). OutputBias: o_proj has one (LLaMA's
	// attention_bias only). MLPBias: gate/up/down have biases (LLaMA's
	// mlp_bias). Mistral has none of them.
	AttentionBias bool
	OutputBias    bool
	MLPBias       bool

	// SlidingWindow is Mistral's attention window in tokens, 0 for full
	// attention. The model must honour it for sequences longer than it.
	SlidingWindow int

	// Token ids; nil or empty when the file leaves them out or null.
	BOSTokenID  *int
	EOSTokenIDs []int // eos_token_id may be one id or a list
	PadTokenID  *int

	Rope Rope

	// Quantization is the checkpoint's MLX affine quantization (config
	// "quantization" or "quantization_config"), nil for float weights.
	Quantization *QuantizationConfig

	// ropeField is the object the RoPE parameters came from ("rope_scaling"
	// or "rope_parameters"), so validation errors name the field in the file.
	ropeField string
}

// ConfigFileName is the name of the config in an HF model directory.
const ConfigFileName = "config.json"

// LoadConfig reads an HF config.json; path may also be the model directory
// holding it.
func LoadConfig(path string) (*Config, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, ConfigFileName)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("model: reading config: %w", err)
	}
	return ParseConfig(data, path)
}

// ParseConfig parses the contents of an HF config.json; path names the file
// in errors. The result is validated.
func ParseConfig(data []byte, path string) (*Config, error) {
	top, err := decodeJSONObject(path, "", data)
	if err != nil {
		return nil, err
	}
	c := &Config{Path: path}
	steps := []func(jsonObject) error{c.parseArchitecture, c.parseSizes, c.parseLayerOptions, c.parseTokenIDs, c.parseRope, c.parseQuantization}
	for _, step := range steps {
		if err := step(top); err != nil {
			return nil, err
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// parseArchitecture takes model_type and checks architectures agrees with it;
// either alone is enough.
func (c *Config) parseArchitecture(top jsonObject) error {
	modelType, hasType, err := top.getString("model_type")
	if err != nil {
		return err
	}
	if hasType {
		if _, ok := architectures[Architecture(modelType)]; !ok {
			return top.errorf("model_type", "unsupported architecture %q (want %s)", modelType, supportedArchitectures())
		}
		c.Architecture = Architecture(modelType)
	}
	classes, _, err := top.getStrings("architectures")
	if err != nil {
		return err
	}
	for _, class := range classes {
		arch, ok := architectureOfClass(class)
		if !ok {
			return top.errorf("architectures", "unsupported architecture %q (want a causal LM of %s)", class, supportedArchitectures())
		}
		if c.Architecture == "" {
			c.Architecture = arch
		} else if arch != c.Architecture {
			return top.errorf("architectures", "%q does not match model_type %q", class, c.Architecture)
		}
	}
	if c.Architecture == "" {
		return top.errorf("model_type", "missing (and no architectures to infer it from)")
	}
	return nil
}

func architectureOfClass(class string) (Architecture, bool) {
	for arch, info := range architectures {
		if info.className == class {
			return arch, true
		}
	}
	return "", false
}

func supportedArchitectures() string {
	names := make([]string, 0, len(architectures))
	for arch := range architectures {
		names = append(names, string(arch))
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func (c *Config) parseSizes(top jsonObject) error {
	required := []struct {
		key string
		dst *int
	}{
		{"vocab_size", &c.VocabSize},
		{"hidden_size", &c.HiddenSize},
		{"intermediate_size", &c.IntermediateSize},
		{"num_hidden_layers", &c.NumHiddenLayers},
		{"num_attention_heads", &c.NumAttentionHeads},
	}
	for _, r := range required {
		v, err := top.requiredPositive(r.key)
		if err != nil {
			return err
		}
		*r.dst = v
	}

	kv, ok, err := top.getInt("num_key_value_heads")
	if err != nil {
		return err
	}
	c.NumKeyValueHeads = c.NumAttentionHeads
	if ok {
		c.NumKeyValueHeads = kv
	}

	headDim, ok, err := top.getInt("head_dim")
	if err != nil {
		return err
	}
	if ok {
		c.HeadDim = headDim
	} else {
		if c.HiddenSize%c.NumAttentionHeads != 0 {
			return top.errorf("num_attention_heads", "%d heads do not divide hidden_size %d (and head_dim is not given)", c.NumAttentionHeads, c.HiddenSize)
		}
		c.HeadDim = c.HiddenSize / c.NumAttentionHeads
	}

	c.RMSNormEps = 1e-6 // the HF default of all three config classes
	if eps, ok, err := top.getFloat("rms_norm_eps"); err != nil {
		return err
	} else if ok {
		c.RMSNormEps = eps
	}
	c.MaxPositionEmbeddings = architectures[c.Architecture].maxPositions
	if n, ok, err := top.getInt("max_position_embeddings"); err != nil {
		return err
	} else if ok {
		c.MaxPositionEmbeddings = n
	}
	return nil
}

// parseLayerOptions reads the switches that change which tensors exist or
// what a layer computes, and rejects the ones this trainer does not implement
// rather than silently computing something else.
func (c *Config) parseLayerOptions(top jsonObject) error {
	if act, ok, err := top.getString("hidden_act"); err != nil {
		return err
	} else if ok && act != "silu" {
		return top.errorf("hidden_act", "unsupported activation %q (LLaMA-family models use silu)", act)
	}

	tie, _, err := top.getBool("tie_word_embeddings")
	if err != nil {
		return err
	}
	c.TieWordEmbeddings = tie

	attentionBias, _, err := top.getBool("attention_bias")
	if err != nil {
		return err
	}
	mlpBias, _, err := top.getBool("mlp_bias")
	if err != nil {
		return err
	}
	switch c.Architecture {
	case ArchLlama:
		// LlamaAttention gives all four projections bias=attention_bias.
		c.AttentionBias, c.OutputBias, c.MLPBias = attentionBias, attentionBias, mlpBias
	case ArchQwen2:
		// Qwen2Attention hard-codes bias=True on q/k/v and False on o.
		c.AttentionBias = true
	case ArchMistral:
		// MistralAttention and MistralMLP hard-code bias=False, so transformers
		// ignores these fields; a checkpoint built on them would not load as the
		// file says.
		for _, field := range []struct {
			key string
			set bool
		}{{"attention_bias", attentionBias}, {"mlp_bias", mlpBias}} {
			if field.set {
				return top.errorf(field.key, "Mistral has no biases in transformers; true is not supported")
			}
		}
	}

	switch c.Architecture {
	case ArchMistral:
		window, _, err := top.getInt("sliding_window")
		if err != nil {
			return err
		}
		if window < 0 {
			return top.errorf("sliding_window", "must not be negative, got %d", window)
		}
		c.SlidingWindow = window
	case ArchQwen2:
		if use, _, err := top.getBool("use_sliding_window"); err != nil {
			return err
		} else if use {
			return top.errorf("use_sliding_window", "sliding-window attention is not supported for qwen2")
		}
	}
	layerTypes, _, err := top.getStrings("layer_types")
	if err != nil {
		return err
	}
	for i, lt := range layerTypes {
		if lt != "full_attention" {
			return top.errorf("layer_types", "layer %d is %q; only full_attention is supported", i, lt)
		}
	}
	return nil
}

func (c *Config) parseTokenIDs(top jsonObject) error {
	for _, id := range []struct {
		key string
		dst **int
	}{{"bos_token_id", &c.BOSTokenID}, {"pad_token_id", &c.PadTokenID}} {
		v, ok, err := top.getInt(id.key)
		if err != nil {
			return err
		}
		if ok {
			*id.dst = &v
		}
	}
	eos, err := top.intOrList("eos_token_id")
	if err != nil {
		return err
	}
	c.EOSTokenIDs = eos
	return nil
}

// parseRope normalises both RoPE layouts, following transformers 5's
// RotaryEmbeddingConfigMixin: a non-empty legacy rope_scaling wins over
// rope_parameters; rope_theta inside the object wins over the top-level one,
// which defaults to 10000; the type is rope_type, else the legacy "type",
// else default; llama3's original_max_position_embeddings comes from the top
// level if set there, else the object, else max_position_embeddings.
func (c *Config) parseRope(top jsonObject) error {
	var rope jsonObject
	found := false
	for _, key := range []string{"rope_scaling", "rope_parameters"} {
		obj, ok, err := top.getObject(key)
		if err != nil {
			return err
		}
		if ok && len(obj.values) > 0 {
			rope, found = obj, true
			c.ropeField = key
			break
		}
	}
	if !found {
		rope = jsonObject{source: c.Path, prefix: "rope_parameters."}
	}
	// transformers 5 may nest the parameters per layer type.
	if rope.has("sliding_attention") {
		return rope.errorf("sliding_attention", "per-layer-type RoPE with sliding attention is not supported")
	}
	if nested, ok, err := rope.getObject("full_attention"); err != nil {
		return err
	} else if ok {
		rope = nested
	}

	c.Rope = Rope{Type: RopeDefault, Theta: 10000}
	if theta, ok, err := top.getFloat("rope_theta"); err != nil {
		return err
	} else if ok {
		c.Rope.Theta = theta
	}
	if theta, ok, err := rope.getFloat("rope_theta"); err != nil {
		return err
	} else if ok {
		c.Rope.Theta = theta
	}

	for _, obj := range []jsonObject{top, rope} {
		if prf, ok, err := obj.getFloat("partial_rotary_factor"); err != nil {
			return err
		} else if ok && prf != 1 {
			return obj.errorf("partial_rotary_factor", "partial rotary embeddings (%g) are not supported", prf)
		}
	}

	typeKey := "rope_type"
	if !rope.has(typeKey) && rope.has("type") {
		typeKey = "type"
	}
	if t, ok, err := rope.getString(typeKey); err != nil {
		return err
	} else if ok {
		c.Rope.Type = RopeType(t)
	}

	switch c.Rope.Type {
	case RopeDefault:
		return nil
	case RopeLinear:
		return c.parseRopeFactor(rope)
	case RopeLlama3:
		if err := c.parseRopeFactor(rope); err != nil {
			return err
		}
		for _, f := range []struct {
			key string
			dst *float64
		}{{"low_freq_factor", &c.Rope.LowFreqFactor}, {"high_freq_factor", &c.Rope.HighFreqFactor}} {
			v, ok, err := rope.getFloat(f.key)
			if err != nil {
				return err
			}
			if !ok {
				return rope.errorf(f.key, "missing (required by rope_type llama3)")
			}
			*f.dst = v
		}
		c.Rope.OriginalMaxPositionEmbeddings = c.MaxPositionEmbeddings
		for _, obj := range []jsonObject{rope, top} { // the top level wins, as in HF
			if n, ok, err := obj.getInt("original_max_position_embeddings"); err != nil {
				return err
			} else if ok {
				c.Rope.OriginalMaxPositionEmbeddings = n
			}
		}
		return nil
	default:
		return rope.errorf(typeKey, "unsupported RoPE type %q (want default, linear or llama3)", c.Rope.Type)
	}
}

func (c *Config) parseRopeFactor(rope jsonObject) error {
	factor, ok, err := rope.getFloat("factor")
	if err != nil {
		return err
	}
	if !ok {
		return rope.errorf("factor", "missing (required by rope_type %s)", c.Rope.Type)
	}
	c.Rope.Factor = factor
	return nil
}

// Upper bounds on a config's sizes. Each is far beyond any released
// LLaMA-family model (the largest have 126 layers, hidden 16384, intermediate
// 53248, a 152K vocabulary, 128 heads of 128 and 1M positions), so only a
// corrupt or mistyped config.json reaches them, and it is rejected up front,
// naming the field, instead of making the loader build millions of tensor
// names or allocate terabytes.
const (
	MaxLayers              = 1024
	MaxHiddenSize          = 1 << 16
	MaxIntermediateSize    = 1 << 20
	MaxVocabSize           = 1 << 22
	MaxAttentionHeads      = 1024
	MaxHeadDim             = 1 << 12
	MaxPositionEmbeddings  = 1 << 21
	maxProjectionDimension = 1 << 20 // heads x head_dim
)

// Validate checks the sizes are consistent and within the bounds above.
// ParseConfig calls it; call it again after changing a Config by hand.
func (c *Config) Validate() error {
	fail := func(field, format string, args ...any) error {
		source := c.Path
		if source == "" {
			source = "config"
		}
		return fmt.Errorf("model: %s: field %q: "+format, append([]any{source, field}, args...)...)
	}
	if _, ok := architectures[c.Architecture]; !ok {
		return fail("model_type", "unsupported architecture %q (want %s)", c.Architecture, supportedArchitectures())
	}
	for _, size := range []struct {
		field string
		value int
	}{
		{"vocab_size", c.VocabSize},
		{"hidden_size", c.HiddenSize},
		{"intermediate_size", c.IntermediateSize},
		{"num_hidden_layers", c.NumHiddenLayers},
		{"num_attention_heads", c.NumAttentionHeads},
		{"num_key_value_heads", c.NumKeyValueHeads},
		{"head_dim", c.HeadDim},
		{"max_position_embeddings", c.MaxPositionEmbeddings},
	} {
		if size.value <= 0 {
			return fail(size.field, "must be positive, got %d", size.value)
		}
	}
	for _, size := range []struct {
		field      string
		value, max int
	}{
		{"vocab_size", c.VocabSize, MaxVocabSize},
		{"hidden_size", c.HiddenSize, MaxHiddenSize},
		{"intermediate_size", c.IntermediateSize, MaxIntermediateSize},
		{"num_hidden_layers", c.NumHiddenLayers, MaxLayers},
		{"num_attention_heads", c.NumAttentionHeads, MaxAttentionHeads},
		{"head_dim", c.HeadDim, MaxHeadDim},
		{"max_position_embeddings", c.MaxPositionEmbeddings, MaxPositionEmbeddings},
	} {
		if size.value > size.max {
			return fail(size.field, "%d is beyond the supported maximum of %d (a corrupt or mistyped config?)", size.value, size.max)
		}
	}
	if c.NumKeyValueHeads > c.NumAttentionHeads {
		return fail("num_key_value_heads", "%d key/value heads exceed the %d attention heads", c.NumKeyValueHeads, c.NumAttentionHeads)
	}
	if q := c.NumAttentionHeads * c.HeadDim; q > maxProjectionDimension {
		return fail("head_dim", "num_attention_heads %d x head_dim %d = %d query channels is beyond the supported maximum of %d", c.NumAttentionHeads, c.HeadDim, q, maxProjectionDimension)
	}
	if c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		return fail("num_key_value_heads", "%d key/value heads do not divide %d attention heads evenly", c.NumKeyValueHeads, c.NumAttentionHeads)
	}
	if c.HeadDim%2 != 0 {
		return fail("head_dim", "must be even for rotary embeddings, got %d", c.HeadDim)
	}
	if !(c.RMSNormEps > 0) || math.IsInf(c.RMSNormEps, 0) {
		return fail("rms_norm_eps", "must be positive and finite, got %g", c.RMSNormEps)
	}
	if c.SlidingWindow < 0 {
		return fail("sliding_window", "must not be negative, got %d", c.SlidingWindow)
	}
	return c.Rope.validate(c.ropeField, fail)
}

func (r Rope) validate(ropeField string, fail func(field, format string, args ...any) error) error {
	if ropeField == "" {
		ropeField = "rope_parameters"
	}
	ropeFail := func(key, format string, args ...any) error {
		return fail(ropeField+"."+key, format, args...)
	}
	if !(r.Theta > 0) || math.IsInf(r.Theta, 0) {
		return fail("rope_theta", "must be positive and finite, got %g", r.Theta)
	}
	switch r.Type {
	case RopeDefault:
	case RopeLinear, RopeLlama3:
		// HF only warns below 1, but a factor < 1 compresses positions the
		// model was never trained on; it is a mistake, not a setting.
		if !(r.Factor >= 1) || math.IsInf(r.Factor, 0) {
			return ropeFail("factor", "must be a finite number >= 1, got %g", r.Factor)
		}
		if r.Type == RopeLinear {
			break
		}
		if !(r.LowFreqFactor > 0) || !(r.HighFreqFactor > r.LowFreqFactor) || math.IsInf(r.HighFreqFactor, 0) {
			return ropeFail("high_freq_factor", "llama3 needs 0 < low_freq_factor < high_freq_factor, got %g and %g", r.LowFreqFactor, r.HighFreqFactor)
		}
		if r.OriginalMaxPositionEmbeddings <= 0 {
			return ropeFail("original_max_position_embeddings", "must be positive, got %d", r.OriginalMaxPositionEmbeddings)
		}
	default:
		return ropeFail("rope_type", "unsupported RoPE type %q (want default, linear or llama3)", r.Type)
	}
	return nil
}

// InvFreq returns the HeadDim/2 RoPE inverse frequencies: element i rotates
// dims i and i+HeadDim/2 (HF's rotate_half pairing) by position * InvFreq[i].
// It follows transformers' _compute_default_rope_parameters,
// _compute_linear_scaling_rope_parameters and _compute_llama3_parameters.
// transformers evaluates these in float32; this computes the same formulas in
// float64, so the values agree to float32 rounding (callers on the GPU round
// to float32 anyway).
func (c *Config) InvFreq() []float64 {
	dim := c.HeadDim
	inv := make([]float64, dim/2)
	for i := range inv {
		inv[i] = 1 / math.Pow(c.Rope.Theta, float64(2*i)/float64(dim))
	}
	switch c.Rope.Type {
	case RopeLinear:
		// Linear scaling divides positions by factor; for the angle
		// position * inv_freq that is the same as dividing inv_freq.
		for i := range inv {
			inv[i] /= c.Rope.Factor
		}
	case RopeLlama3:
		r := c.Rope
		oldContext := float64(r.OriginalMaxPositionEmbeddings)
		lowFreqWavelen := oldContext / r.LowFreqFactor
		highFreqWavelen := oldContext / r.HighFreqFactor
		for i, f := range inv {
			wavelen := 2 * math.Pi / f
			switch {
			case wavelen < highFreqWavelen: // high frequencies: unchanged
			case wavelen > lowFreqWavelen: // low frequencies: fully scaled
				inv[i] = f / r.Factor
			default: // in between: interpolate smoothly
				smooth := (oldContext/wavelen - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor)
				inv[i] = (1-smooth)*f/r.Factor + smooth*f
			}
		}
	}
	return inv
}
