package model

import (
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model/safetensors"
)

// Load reads an HF checkpoint directory (config.json plus model.safetensors or a
// sharded index) and uploads its weights to the device. Projection weights and
// the embedding/LM head are stored as dtype (F32, or BF16 to halve memory);
// norms and biases stay f32. Compute is f32 either way.
//
// The checkpoint is verified first (VerifyCheckpoint), and every weight is
// checked for NaN and infinity as it is converted on the host. Load drops
// VerifyCheckpoint's warnings; code that can show them calls
// LoadWithWarnings.
func Load(dev *gpu.Device, dir string, dtype gpu.DType) (*Model, error) {
	m, _, err := LoadWithWarnings(dev, dir, dtype)
	return m, err
}

// LoadWithWarnings is Load that also returns VerifyCheckpoint's warnings
// (tensors the checkpoint holds that the model ignores), for the caller to
// show: library code prints nothing.
func LoadWithWarnings(dev *gpu.Device, dir string, dtype gpu.DType) (*Model, []string, error) {
	return LoadWithOptions(dev, dir, LoadOptions{DType: dtype})
}

// LoadOptions say how Load stores the frozen weights.
type LoadOptions struct {
	// DType is the storage of float weights: F32, or BF16 to halve memory.
	DType gpu.DType
	// Quantize, when set, quantizes the float projection, embedding and LM
	// head weights at load with MLX's rounding (QuantizeAffine), scales and
	// biases in the checkpoint's dtype. A checkpoint that is already
	// quantized loads as it is, without it.
	Quantize *Quantization
	// HostEmbedding keeps the embedding table in host memory (Model.HostEmbed,
	// stored as on the GPU: f32, bf16 or quantized) when the LM head is
	// untied: runs that only look the table up (LoRA training, evaluation,
	// generation) then upload the rows of their tokens instead of holding
	// the whole table on the GPU. A tied head multiplies by the table, so it
	// stays on the GPU (Config.EmbeddingOnHost); full-parameter training,
	// which trains it, must leave this off.
	HostEmbedding bool
}

// LoadWithOptions is LoadWithWarnings with the weights' storage chosen by
// opts. A checkpoint whose config carries MLX's "quantization" keeps its
// codes on the GPU (the kernels dequantize them as they read them).
func LoadWithOptions(dev *gpu.Device, dir string, opts LoadOptions) (*Model, []string, error) {
	cfg, err := LoadConfig(filepath.Join(dir, ConfigFileName))
	if err != nil {
		return nil, nil, err
	}
	if opts.Quantize != nil {
		if cfg.Quantization != nil {
			return nil, nil, fmt.Errorf("model: config %s: the checkpoint is already quantized (%s); load it without --quantize", cfg.Path, cfg.Quantization.Default)
		}
		if err := opts.Quantize.Check(); err != nil {
			return nil, nil, err
		}
	}
	ckpt, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, nil, err
	}
	defer ckpt.Close()
	warnings, err := VerifyCheckpoint(cfg, ckpt)
	if err != nil {
		return nil, nil, err
	}
	m, err := uploadWeights(dev, cfg, ckpt, opts)
	if err != nil {
		return nil, nil, err
	}
	if opts.Quantize != nil { // the model's config describes the weights it holds
		cfg.Quantization = &QuantizationConfig{Default: *opts.Quantize}
	}
	return m, warnings, nil
}

// uploadWeights creates the model's tensors from a verified checkpoint.
func uploadWeights(dev *gpu.Device, cfg *Config, ckpt safetensors.Reader, opts LoadOptions) (*Model, error) {
	dtype := opts.DType
	var err error
	m := &Model{Config: cfg, Dev: dev}
	if m.Sources, err = sourceFiles(ckpt); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			m.Release()
		}
	}()
	uploadValues := func(info safetensors.TensorInfo, values []float32, dt gpu.DType) (*gpu.Tensor, error) {
		t, err := dev.NewTensor(dt, info.Name, info.Shape...)
		if err != nil {
			return nil, fmt.Errorf("%s: tensor %s: %w", ckpt.Path(), info.Name, err)
		}
		if err := t.Upload(values); err != nil {
			t.Release()
			return nil, fmt.Errorf("%s: tensor %s: %w", ckpt.Path(), info.Name, err)
		}
		return t, nil
	}
	upload := func(name string, dt gpu.DType) (*gpu.Tensor, error) {
		info, values, err := readFinite(ckpt, name)
		if err != nil {
			return nil, err
		}
		return uploadValues(info, values, dt)
	}
	// readWeight reads a quantizable module's weight on the host: the
	// checkpoint's codes or its float values quantized at load (w), or its
	// float values.
	readWeight := func(module string) (w *gpu.AffineWeight, info safetensors.TensorInfo, values []float32, err error) {
		name := module + ".weight"
		if s := cfg.Quantization.For(module, holds(ckpt)); s != nil {
			w, err = readAffine(ckpt, module, moduleShape(cfg, module), *s)
			return w, info, nil, err
		}
		if info, values, err = readFinite(ckpt, name); err != nil {
			return nil, info, nil, err
		}
		// Modules whose input size the group does not divide stay float, as mlx-lm leaves them.
		if opts.Quantize != nil && moduleShape(cfg, module)[1]%opts.Quantize.GroupSize == 0 {
			if w, err = QuantizeAffine(values, info.Shape[0], info.Shape[1], *opts.Quantize, scaleType(info.Dtype)); err != nil {
				return nil, info, nil, fmt.Errorf("model: %s: tensor %q %v: %w", info.Path, name, info.Shape, err)
			}
		}
		return w, info, values, nil
	}
	uploadWeight := func(module string) (*gpu.Tensor, error) {
		w, info, values, err := readWeight(module)
		if err != nil {
			return nil, err
		}
		if w == nil {
			return uploadValues(info, values, dtype)
		}
		t, err := dev.NewAffineTensor(w, module+".weight")
		if err != nil {
			return nil, fmt.Errorf("%s: tensor %s.weight: %w", ckpt.Path(), module, err)
		}
		return t, nil
	}
	if cfg.EmbeddingOnHost(opts.HostEmbedding) {
		w, _, values, err := readWeight("model.embed_tokens")
		if err != nil {
			return nil, err
		}
		shape := moduleShape(cfg, "model.embed_tokens")
		if m.HostEmbed, err = newEmbedding(dev, w, values, shape[0], shape[1], dtype); err != nil {
			return nil, fmt.Errorf("%s: tensor model.embed_tokens.weight: %w", ckpt.Path(), err)
		}
	} else if m.Embed, err = uploadWeight("model.embed_tokens"); err != nil {
		return nil, err
	}
	if m.Norm, err = upload("model.norm.weight", gpu.F32); err != nil {
		return nil, err
	}
	if cfg.TieWordEmbeddings {
		m.Head = m.Embed
	} else if m.Head, err = uploadWeight("lm_head"); err != nil {
		return nil, err
	}
	for i := 0; i < cfg.NumHiddenLayers; i++ {
		l := &Layer{}
		m.Layers = append(m.Layers, l)
		prefix := fmt.Sprintf("model.layers.%d.", i)
		if l.InputNorm, err = upload(prefix+"input_layernorm.weight", gpu.F32); err != nil {
			return nil, err
		}
		if l.PostNorm, err = upload(prefix+"post_attention_layernorm.weight", gpu.F32); err != nil {
			return nil, err
		}
		for _, p := range Projections {
			name := prefix + p.Module() + "." + p.String()
			w, err := uploadWeight(name)
			if err != nil {
				return nil, err
			}
			var bias *gpu.Tensor
			if hasBias(cfg, p) {
				if bias, err = upload(name+".bias", gpu.F32); err != nil {
					w.Release()
					return nil, err
				}
			}
			if l.Proj[p], err = NewLinear(dev, w, bias); err != nil {
				w.Release()
				bias.Release()
				return nil, fmt.Errorf("%s: %s: %w", ckpt.Path(), name, err)
			}
		}
	}
	if m.Rope, err = NewRopeTable(dev, cfg.InvFreq(), cfg.MaxPositionEmbeddings); err != nil {
		return nil, err
	}
	ok = true
	return m, nil
}

// checkFinite fails on the first NaN or infinity of a tensor's values, naming
// the tensor, the file that holds it and the element: such a weight turns
// every output it touches into NaN, which would otherwise surface only as a
// NaN loss far from its cause.
// readFinite reads tensor name as float32 and refuses non-finite values,
// naming the element.
func readFinite(ckpt safetensors.Reader, name string) (safetensors.TensorInfo, []float32, error) {
	info, err := ckpt.Info(name)
	if err != nil {
		return info, nil, err
	}
	values, err := ckpt.ReadFloat32(name)
	if err != nil {
		return info, nil, err
	}
	return info, values, checkFinite(info, values)
}

func checkFinite(info safetensors.TensorInfo, values []float32) error {
	for i, v := range values {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("model: %s: tensor %q: element %d (index %v of shape %v) is %v; the checkpoint is corrupt or was saved from a diverged run",
				info.Path, info.Name, i, unflatten(i, info.Shape), info.Shape, v)
		}
	}
	return nil
}

// unflatten turns a row-major flat index into per-dimension indices.
func unflatten(i int, shape []int) []int {
	idx := make([]int, len(shape))
	for d := len(shape) - 1; d >= 0; d-- {
		if shape[d] > 0 {
			idx[d] = i % shape[d]
			i /= shape[d]
		}
	}
	return idx
}

// decoderLayerName matches the HF names of decoder-layer tensors.
var decoderLayerName = regexp.MustCompile(`^model\.layers\.(\d+)\.`)

// ignoredTensorSuffixes are buffers some exporters save that hold no
// parameters (rotary inverse frequencies, recomputed from the config).
var ignoredTensorSuffixes = []string{".rotary_emb.inv_freq"}

// maxListedNames bounds the tensor names quoted in one warning.
const maxListedNames = 5

// VerifyCheckpoint runs every check Load makes before reading any weight.
// Errors: the parameters the config implies exceed what the checkpoint holds
// (a mismatched config, reported by its sizes), the checkpoint holds decoder
// layers beyond num_hidden_layers (a config that would silently drop layers),
// or CheckCheckpoint finds a tensor missing or misshapen. Warnings, for the
// caller to show: lm_head.weight present although tie_word_embeddings is true
// (ignored, as transformers ignores it), and other tensors the model does not
// use, such as biases the config does not enable.
func VerifyCheckpoint(cfg *Config, ckpt safetensors.Reader) (warnings []string, err error) {
	names := ckpt.Names()
	var held int64
	for _, name := range names {
		if info, err := ckpt.Info(name); err == nil {
			held += info.NumElements()
		}
	}
	want := cfg.ParameterCount()
	if cfg.Quantization != nil {
		// Quantized modules hold packed codes, scales and biases: the tensor
		// by tensor check below names what is missing or misshapen.
		want = 0
	}
	if want > held {
		return nil, fmt.Errorf("model: config %s implies %d parameters (num_hidden_layers %d, hidden_size %d, intermediate_size %d, vocab_size %d) but checkpoint %s holds only %d values: the config does not belong to this checkpoint",
			cfg.Path, want, cfg.NumHiddenLayers, cfg.HiddenSize, cfg.IntermediateSize, cfg.VocabSize, ckpt.Path(), held)
	}
	extraLayers := map[int]string{} // layer -> its first tensor
	for _, name := range names {
		match := decoderLayerName.FindStringSubmatch(name)
		if match == nil {
			continue
		}
		layer, err := strconv.Atoi(match[1])
		if err != nil || layer >= cfg.NumHiddenLayers {
			if _, seen := extraLayers[layer]; !seen {
				extraLayers[layer] = name
			}
		}
	}
	if len(extraLayers) > 0 {
		layers := slices.Sorted(maps.Keys(extraLayers))
		return nil, fmt.Errorf("model: checkpoint %s holds decoder layer %d (e.g. tensor %q), but config %s field \"num_hidden_layers\" is %d: the config would silently drop %d layer(s)",
			ckpt.Path(), layers[0], extraLayers[layers[0]], cfg.Path, cfg.NumHiddenLayers, len(layers))
	}
	if err := CheckCheckpoint(cfg, ckpt); err != nil {
		return nil, err
	}

	expected := checkpointTensors(cfg, ckpt)
	var unused []string
	for _, name := range names {
		if _, ok := expected[name]; ok {
			continue
		}
		if name == "lm_head.weight" && cfg.TieWordEmbeddings {
			warnings = append(warnings, fmt.Sprintf("%s: tensor \"lm_head.weight\" is ignored: config %s sets tie_word_embeddings, so the LM head is model.embed_tokens.weight (as in transformers)", ckpt.Path(), cfg.Path))
			continue
		}
		if !slices.ContainsFunc(ignoredTensorSuffixes, func(s string) bool { return strings.HasSuffix(name, s) }) {
			unused = append(unused, name)
		}
	}
	if len(unused) > 0 {
		listed := unused[:min(len(unused), maxListedNames)]
		more := ""
		if len(unused) > len(listed) {
			more = fmt.Sprintf(" and %d more", len(unused)-len(listed))
		}
		warnings = append(warnings, fmt.Sprintf("%s: %d tensor(s) the model of config %s does not use are ignored: %s%s",
			ckpt.Path(), len(unused), cfg.Path, strings.Join(listed, ", "), more))
	}
	return warnings, nil
}

// hasBias says whether the checkpoint has a bias for projection p (Qwen2's
// q/k/v, LLaMA's attention_bias on q/k/v/o, mlp_bias on gate/up/down).
func hasBias(cfg *Config, p Projection) bool {
	switch p {
	case ProjQ, ProjK, ProjV:
		return cfg.AttentionBias
	case ProjO:
		return cfg.OutputBias
	}
	return cfg.MLPBias
}
